"""ORAM geometry and tuning: one frozen value fixed when a tree is created."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from otrace.errors import ConfigError

__all__ = ["DEFAULT_BLOCK_SIZE", "EMPTY_SLOT", "FORMAT", "MAX_BLOCKS", "OramParams"]

# Stored in every tree's metadata. 1 (no field in the JSON): 2**ceil(log2 N)
# leaves, deltas carrying the whole stash. 2: utilisation up to 50% (see
# `height`), deltas carrying only the stash blocks a batch changed. PathOram
# opens format 2 only; DirectBlockStore, whose rows did not change, both.
FORMAT = 2

# With the default 4 slots a bucket row is 4*B + 108 bytes of blob (child digests, ids,
# nonce, tag) plus ~13 of SQLite record header. At B <= 4056 it fits in one 16 KiB
# SQLite page (at most 16,349 bytes a row there) and an update rewrites that one page;
# at B = 4096 (16,492 bytes) each row spills into an overflow page and an update
# rewrites two: the write loop measured 0.90/0.76 against 1.37/1.20 ms a block
# (`otrace bench oram --batch 32 --cache-levels 8`, alternated). PostgreSQL, with its
# 8 KiB pages and out-of-line blobs, does not care.
DEFAULT_BLOCK_SIZE = 4048

EMPTY_SLOT = 0xFFFF_FFFF
MAX_BLOCKS = EMPTY_SLOT  # block ids are u32; the all-ones id marks an empty slot
_TREE_ID = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True, slots=True)
class OramParams:
    """Geometry of one Path ORAM tree.

    `height` L is the smallest with 2**L >= blocks / slots: 2**L leaves and
    2**(L+1) - 1 buckets of `slots` (Z) blocks each, so about 2 to 4 slots
    per logical block (utilisation 25-50%; with Z=4 and N a power of two,
    N/4 leaves and 50%, as in Ren et al., USENIX Security'15). `stash_bound`
    is the largest stash carried between batches; the persisted stash is always
    padded to it so the sealed state has one size. `batch_size` is the number of
    paths every `access_batch` touches (real accesses padded with dummies).
    """

    tree_id: str
    blocks: int
    block_size: int = DEFAULT_BLOCK_SIZE
    slots: int = 4
    stash_bound: int = 100
    batch_size: int = 1
    checkpoint_every: int = 64
    format: int = FORMAT

    def __post_init__(self) -> None:
        if not _TREE_ID.match(self.tree_id):
            raise ConfigError(
                f"tree id {self.tree_id!r} must be 1-32 chars of a-z, 0-9, _ starting with a letter"
            )
        if not 2 <= self.blocks <= MAX_BLOCKS:
            raise ConfigError(f"ORAM capacity must be 2..{MAX_BLOCKS} blocks, got {self.blocks}")
        if not 16 <= self.block_size <= 1 << 20:
            raise ConfigError(f"block size must be 16 B..1 MiB, got {self.block_size}")
        if self.slots < 1:
            raise ConfigError("buckets need at least one slot")
        if self.stash_bound < self.slots:
            raise ConfigError(f"stash bound must be >= {self.slots} (one bucket)")
        if not 1 <= self.batch_size <= 4096:
            raise ConfigError(f"batch size must be 1..4096, got {self.batch_size}")
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every must be >= 1")
        if self.format not in (1, FORMAT):
            raise ConfigError(f"unknown ORAM storage format {self.format}")

    def is_checkpoint(self, seq: int) -> bool:
        """Whether commit `seq` writes a checkpoint (and syncs the freshness counter)."""
        return seq % self.checkpoint_every == 0

    @property
    def height(self) -> int:
        if self.format == 1:
            return max(1, (self.blocks - 1).bit_length())
        per_leaf = -(-self.blocks // self.slots)  # ceil(blocks / slots)
        return max(1, (per_leaf - 1).bit_length())

    @property
    def leaves(self) -> int:
        return 1 << self.height

    @property
    def buckets(self) -> int:
        return 2 * self.leaves - 1

    def to_json(self) -> bytes:
        fields = asdict(self)
        if self.format == 1:
            del fields["format"]  # format 1 predates the field: keep its fingerprint
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> OramParams:
        """Parses stored parameters; metadata without a format is format 1."""
        try:
            fields = json.loads(raw)
            fields.setdefault("format", 1)
            return cls(**fields)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"stored ORAM parameters are unreadable: {exc}") from exc

    def fingerprint(self) -> bytes:
        return hashlib.sha256(b"otrace-oram-params\x00" + self.to_json()).digest()
