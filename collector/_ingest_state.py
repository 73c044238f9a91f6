"""The sealed ingest state: what of the journal is in the block device, and where next.

It is sealed beside the blocks, in the same transaction as the blocks it describes
(`collector._ingest`), as one fixed-size record, so the counters never show in the
row length; its version refuses a layout an older otrace wrote.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from otrace.errors import ConfigError

__all__ = ["IngestState", "decode_state", "encode_state"]


@dataclass(frozen=True, slots=True)
class IngestState:
    """Sealed beside the blocks: what of the journal is in the device, and where next."""

    watermark: int = 0
    next_block: int = 0  # blocks ever allocated; the ring position is this mod capacity
    epochs: int = 0
    spans: int = 0
    pending: tuple[int, int, int, int] | None = None  # first, last entry, blocks done, base
    index_gen: int = 0  # which sealed index state belongs to this commit ...
    index_digest: bytes = bytes(32)  # ... and its SHA-256


# Fixed size, so counters never show in the row length; the version refuses older layouts.
_STATE_LAYOUT = struct.Struct("<BQQQQBQQQQQ32s")
_STATE_VERSION = 2


def encode_state(state: IngestState) -> bytes:
    pending = state.pending or (0, 0, 0, 0)
    return _STATE_LAYOUT.pack(
        _STATE_VERSION,
        state.watermark,
        state.next_block,
        state.epochs,
        state.spans,
        state.pending is not None,
        *pending,
        state.index_gen,
        state.index_digest,
    )


def decode_state(raw: bytes) -> IngestState:
    if len(raw) != _STATE_LAYOUT.size or raw[0] != _STATE_VERSION:
        raise ConfigError(
            "the data directory was written by an older otrace (ingest state layout "
            "changed); move it aside and start afresh"
        )
    _, watermark, next_block, epochs, spans, has_pending, *rest = _STATE_LAYOUT.unpack(raw)
    first, last, done, base, index_gen, index_digest = rest
    return IngestState(
        watermark,
        next_block,
        epochs,
        spans,
        (first, last, done, base) if has_pending else None,
        index_gen,
        index_digest,
    )
