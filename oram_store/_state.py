"""Client state of a Path ORAM and its sealed, fixed-size persistence.

The state is the position map (one u32 leaf per block), the stash, the root
digest and the commit sequence number. It is committed in the same storage
transaction as the paths it describes, as either

- a checkpoint: the whole position map plus the stash, every `checkpoint_every`
  commits, or
- a delta: the (block, new leaf) pairs of one batch, padded to the batch size,
  the ids of the blocks in the stash, padded to `stash_bound`, and the data of
  the stash blocks this batch changed, padded to the batch size.

A delta carries only the stash blocks the batch changed because eviction keeps
every block it read from the tree and did not remap (`evict(resident=...)`):
the blocks left in the stash are ones already there, whose data the previous
records hold, or ones the batch remapped, at most `batch_size` of them. A
single access therefore writes one block of stash data, not `stash_bound`.
Checkpoints carry the whole stash, padded to `stash_bound`. Every delta has one
size and every checkpoint has one size: the storage learns nothing from them
but their count. Records are sealed by a pluggable `StateSealer` with associated
data binding the tree, the sequence number and the record kind (the enclave's
`tee.Sealer` in production; `tee.Sealer.from_key` over the KMS `state_key`), so records
cannot be reordered, swapped between trees or replayed into another slot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from oram_store._codec import DIGEST_SIZE
from oram_store._params import EMPTY_SLOT, OramParams
from oram_store._store import CHECKPOINT, DELTA, StateRecord
from otrace.errors import ConfigError, IntegrityError, RollbackError
from tee import FreshnessCounter, StateSealer

__all__ = ["ClientState", "FreshnessCounter", "StateCodec", "StateSealer", "check_fresh"]

_HEADER = struct.Struct(f"<8sQ{DIGEST_SIZE}sI")  # magic, seq, root digest, stash count
_CHECKPOINT_MAGIC = b"OTRCKPT1"
_DELTA_MAGIC = b"OTRDLTA2"
_PAIR = struct.Struct("<II")
_ID = struct.Struct("<I")


@dataclass(slots=True)
class ClientState:
    """The mutable client state; the ORAM replaces it whole after each commit."""

    seq: int
    root: bytes
    positions: npt.NDArray[np.uint32]
    stash: dict[int, bytes]


class StateCodec:
    """Encodes and seals checkpoints and deltas of one tree at fixed sizes."""

    def __init__(self, params: OramParams, sealer: StateSealer) -> None:
        self._p = params
        self._sealer = sealer
        self._entry = params.block_size + 4
        self._context_prefix = b"otrace-oram-state\x00" + params.fingerprint()
        self._ids = struct.Struct(f"<{params.stash_bound}I")
        # Stash blocks a delta can carry: a batch remaps at most batch_size blocks.
        self.delta_entries = min(params.batch_size, params.stash_bound)

    def checkpoint(self, state: ClientState) -> StateRecord:
        body = state.positions.astype("<u4", copy=False).tobytes()
        return self._seal(CHECKPOINT, _CHECKPOINT_MAGIC, state, body)

    def delta(
        self,
        state: ClientState,
        moved: Iterable[tuple[int, int]],
        changed: Mapping[int, bytes],
    ) -> StateRecord:
        """A delta: the remapped blocks' new leaves, the stash's ids, and `changed`.

        `changed` holds the stash blocks whose data the previous records do not
        have (new in the stash, or rewritten); eviction keeps it within the
        batch's remapped blocks.
        """
        p = self._p
        pairs = [_PAIR.pack(b, leaf) for b, leaf in moved]
        if len(pairs) > p.batch_size:
            raise ConfigError("more remapped blocks than the batch size")
        if len(changed) > self.delta_entries:
            raise ConfigError("more changed stash blocks than a delta carries")
        pairs += [_PAIR.pack(EMPTY_SLOT, 0)] * (p.batch_size - len(pairs))
        ids = self._ids.pack(*state.stash, *[EMPTY_SLOT] * (p.stash_bound - len(state.stash)))
        entries = [_ID.pack(b) + data for b, data in changed.items()]
        entries.append(bytes(self._entry * (self.delta_entries - len(changed))))
        body = b"".join((ids, *entries, *pairs))
        return self._seal(DELTA, _DELTA_MAGIC, state, body, stash=b"")

    def restore(self, records: list[StateRecord]) -> ClientState:
        """Rebuilds the state from a checkpoint and the deltas after it."""
        if not records or records[0].kind != CHECKPOINT:
            raise IntegrityError(f"ORAM tree {self._p.tree_id!r}: no sealed checkpoint in storage")
        state: ClientState | None = None
        for expected_seq, record in enumerate(records, start=records[0].seq):
            if record.seq != expected_seq:
                raise IntegrityError(
                    f"ORAM tree {self._p.tree_id!r}: state record {expected_seq} is missing"
                )
            state = self._apply(state, record)
        assert state is not None
        return state

    def _apply(self, state: ClientState | None, record: StateRecord) -> ClientState:
        try:
            plain = self._sealer.unseal(record.blob, self._context(record.seq, record.kind))
        except IntegrityError as exc:
            raise IntegrityError(
                f"ORAM tree {self._p.tree_id!r}: sealed state record {record.seq} failed "
                "authentication (tampered, moved to another slot, or sealed under another key)"
            ) from exc
        magic, seq, root, stash_count = _HEADER.unpack_from(plain)
        want = _CHECKPOINT_MAGIC if record.kind == CHECKPOINT else _DELTA_MAGIC
        if magic != want or seq != record.seq or stash_count > self._p.stash_bound:
            raise IntegrityError(
                f"ORAM tree {self._p.tree_id!r}: malformed state record {record.seq}"
            )
        if record.kind == DELTA:
            return self._apply_delta(state, record.seq, root, stash_count, plain)
        stash = self._decode_stash(plain, stash_count)
        body = memoryview(plain)[_HEADER.size + self._p.stash_bound * self._entry :]
        if record.kind == CHECKPOINT:
            positions = np.frombuffer(body, dtype="<u4").astype(np.uint32)
            if positions.size != self._p.blocks:
                raise IntegrityError(
                    f"ORAM tree {self._p.tree_id!r}: checkpoint has the wrong size"
                )
            return ClientState(seq, root, positions, stash)
        raise IntegrityError(f"ORAM tree {self._p.tree_id!r}: unknown state record kind")

    def _apply_delta(
        self, state: ClientState | None, seq: int, root: bytes, stash_count: int, plain: bytes
    ) -> ClientState:
        p = self._p
        if state is None:
            raise IntegrityError(f"ORAM tree {p.tree_id!r}: delta without a checkpoint")
        ids_end = _HEADER.size + _ID.size * p.stash_bound
        ids = self._ids.unpack_from(plain, _HEADER.size)[:stash_count]
        changed: dict[int, bytes] = {}
        for i in range(self.delta_entries):
            off = ids_end + i * self._entry
            (block,) = _ID.unpack_from(plain, off)
            if block != EMPTY_SLOT:
                changed[block] = plain[off + 4 : off + self._entry]
        stash: dict[int, bytes] = {}
        for block in ids:
            data = changed.get(block, state.stash.get(block))
            if data is None:
                raise IntegrityError(
                    f"ORAM tree {p.tree_id!r}: state record {seq} names a stash block "
                    "no record holds"
                )
            stash[block] = data
        positions = state.positions
        pairs_start = ids_end + self.delta_entries * self._entry
        for block, leaf in _PAIR.iter_unpack(plain[pairs_start:]):
            if block != EMPTY_SLOT:
                positions[block] = leaf
        return ClientState(seq, root, positions, stash)

    def _seal(
        self,
        kind: int,
        magic: bytes,
        state: ClientState,
        body: bytes,
        stash: bytes | None = None,
    ) -> StateRecord:
        if len(state.stash) > self._p.stash_bound:
            raise ConfigError("stash larger than its bound cannot be sealed")
        header = _HEADER.pack(magic, state.seq, state.root, len(state.stash))
        if stash is None:
            stash = self._encode_stash(state.stash)
        plain = b"".join((header, stash, body))
        return StateRecord(
            state.seq, kind, self._sealer.seal(plain, self._context(state.seq, kind))
        )

    def _encode_stash(self, stash: dict[int, bytes]) -> bytes:
        parts = [struct.pack("<I", b) + data for b, data in stash.items()]
        padding = bytes(self._entry * (self._p.stash_bound - len(stash)))
        return b"".join(parts) + padding

    def _decode_stash(self, plain: bytes, count: int) -> dict[int, bytes]:
        stash: dict[int, bytes] = {}
        base = _HEADER.size
        for i in range(count):
            off = base + i * self._entry
            (block,) = struct.unpack_from("<I", plain, off)
            stash[block] = plain[off + 4 : off + self._entry]
        return stash

    def _context(self, seq: int, kind: int) -> bytes:
        return self._context_prefix + struct.pack("<QB", seq, kind)


def check_fresh(counter: FreshnessCounter | None, seq: int, what: str) -> None:
    """Refuses state older than the monotonic counter, then advances the counter to it.

    The database may be ahead of the counter (a crash between commit and
    advance), never behind it: that is a restored older copy.
    """
    if counter is None:
        return
    if seq < counter.current():
        raise RollbackError(
            f"{what} is at commit {seq} but the monotonic counter says "
            f"{counter.current()}: the database was restored to an older copy"
        )
    counter.advance(seq)
