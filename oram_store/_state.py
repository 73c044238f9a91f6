"""Client state of a Path ORAM and its sealed, fixed-size persistence.

The state is the position map (one u32 leaf per block), the stash, the root
digest and the commit sequence number. It is committed in the same storage
transaction as the paths it describes, as either

- a checkpoint: the whole position map plus the stash, every `checkpoint_every`
  commits, or
- a delta: the (block, new leaf) pairs of one batch, padded to the batch size,
  plus the whole stash.

The stash is always padded to `stash_bound` slots, so every delta has one size
and every checkpoint has one size: the storage learns nothing from them but
their count. Records are sealed by a pluggable `StateSealer` with associated
data binding the tree, the sequence number and the record kind (the enclave's
`tee.Sealer` in production; `tee.Sealer.from_key` over the KMS `state_key`), so records
cannot be reordered, swapped between trees or replayed into another slot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
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
_DELTA_MAGIC = b"OTRDLTA1"
_PAIR = struct.Struct("<II")


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

    def checkpoint(self, state: ClientState) -> StateRecord:
        body = state.positions.astype("<u4", copy=False).tobytes()
        return self._seal(CHECKPOINT, _CHECKPOINT_MAGIC, state, body)

    def delta(self, state: ClientState, moved: Iterable[tuple[int, int]]) -> StateRecord:
        pairs = [_PAIR.pack(b, leaf) for b, leaf in moved]
        if len(pairs) > self._p.batch_size:
            raise ConfigError("more remapped blocks than the batch size")
        pairs += [_PAIR.pack(EMPTY_SLOT, 0)] * (self._p.batch_size - len(pairs))
        return self._seal(DELTA, _DELTA_MAGIC, state, b"".join(pairs))

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
        stash = self._decode_stash(plain, stash_count)
        body = memoryview(plain)[_HEADER.size + self._p.stash_bound * self._entry :]
        if record.kind == CHECKPOINT:
            positions = np.frombuffer(body, dtype="<u4").astype(np.uint32)
            if positions.size != self._p.blocks:
                raise IntegrityError(
                    f"ORAM tree {self._p.tree_id!r}: checkpoint has the wrong size"
                )
            return ClientState(seq, root, positions, stash)
        if state is None:
            raise IntegrityError(f"ORAM tree {self._p.tree_id!r}: delta without a checkpoint")
        positions = state.positions
        for block, leaf in _PAIR.iter_unpack(body):
            if block != EMPTY_SLOT:
                positions[block] = leaf
        return ClientState(seq, root, positions, stash)

    def _seal(self, kind: int, magic: bytes, state: ClientState, body: bytes) -> StateRecord:
        if len(state.stash) > self._p.stash_bound:
            raise ConfigError("stash larger than its bound cannot be sealed")
        header = _HEADER.pack(magic, state.seq, state.root, len(state.stash))
        plain = b"".join((header, self._encode_stash(state.stash), body))
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
        return b"otrace-oram-state\x00" + self._p.fingerprint() + struct.pack("<QB", seq, kind)


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
