"""The enclave's ingest engine: validate and journal Exports, drain the journal in epochs.

An epoch takes the journal entries after the watermark, splits them into span
records, packs those into data blocks and writes the blocks to the block
device (the Path ORAM, or the encrypted baseline) in batches of the device's
batch size. The ingest state (watermark, next block, a half-written epoch) is
sealed and committed in the same transaction as the blocks it describes, so a
crash at any instant either replays an epoch from the journal or continues a
half-written one where it stopped: every acknowledged span is stored exactly once.
Packing is deterministic for a given set of entries, which is what makes
continuing a half-written epoch safe.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector._journal import Journal
from collector._otlp import PROTOBUF, Limits, decode_request, validate
from collector._packing import pack_blocks, records_from_request, traces_data, unpack_blocks
from oram_store import OramParams, Read, TransactionHook, TreeTransaction, Write
from otrace.errors import IntegrityError, InvalidRequest
from tee import StateSealer

__all__ = ["BlockDevice", "EpochReport", "IngestEngine", "IngestOutcome", "IngestState"]

_STATE = "ingest"


class BlockDevice(Protocol):
    """What ingest needs of `PathOram` and `DirectBlockStore`."""

    params: OramParams

    @property
    def seq(self) -> int: ...

    @property
    def store(self) -> object: ...

    def access_batch(
        self, ops: Sequence[Read | Write], *, in_transaction: TransactionHook | None = None
    ) -> list[bytes | None]: ...


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """The answer to one Export: accepted, or refused with a reason."""

    ok: bool
    accepted: int = 0
    rejected: int = 0
    message: str = ""


@dataclass(frozen=True, slots=True)
class IngestState:
    """Sealed beside the blocks: what of the journal is in the device, and where next."""

    watermark: int = 0
    next_block: int = 0  # blocks ever allocated; the ring position is this mod capacity
    epochs: int = 0
    spans: int = 0
    pending: tuple[int, int, int, int] | None = None  # first, last entry, blocks done, base


@dataclass(frozen=True, slots=True)
class EpochReport:
    entries: int
    spans: int
    blocks: int
    seconds: float


class IngestEngine:
    """Owns the journal, the block device and the sealed ingest state."""

    def __init__(
        self,
        device: BlockDevice,
        journal: Journal,
        sealer: StateSealer,
        *,
        limits: Limits | None = None,
        max_epoch_entries: int = 256,
    ) -> None:
        self.device = device
        self.journal = journal
        self._sealer = sealer
        self._limits = limits or Limits()
        self._max_entries = max_epoch_entries
        self._drain_lock = threading.Lock()
        self.state = self._load_state()
        journal.resume_after(self.state.watermark)

    # ----------------------------------------------------------------- ingest

    def ingest(self, items: Sequence[tuple[str, bytes]]) -> list[IngestOutcome]:
        """Validates each request and journals the valid spans of all of them in one commit."""
        outcomes: list[IngestOutcome] = []
        payloads: list[bytes] = []
        for content_type, body in items:
            try:
                request = decode_request(body, content_type)
            except InvalidRequest as exc:
                outcomes.append(IngestOutcome(False, message=str(exc)))
                continue
            checked = validate(request, self._limits)
            if checked.accepted:
                untouched = checked.rejected == 0 and content_type == PROTOBUF
                payloads.append(body if untouched else checked.request.SerializeToString())
            outcomes.append(IngestOutcome(True, checked.accepted, checked.rejected, checked.reason))
        if payloads:
            self.journal.append(payloads)
        return outcomes

    def journal_depth(self) -> int:
        return self.journal.last_seq - self.state.watermark

    # ------------------------------------------------------------------ drain

    def drain_once(self) -> EpochReport | None:
        """Runs one epoch if the journal holds anything; returns what it stored."""
        with self._drain_lock:
            started = time.perf_counter()
            st = self.state
            if st.pending is not None:
                first, last, done, base = st.pending
                entries = self.journal.read_after(first - 1, last - first + 1)
                if len(entries) != last - first + 1:
                    # Repacking fewer entries would not reproduce the blocks already written.
                    raise IntegrityError(
                        f"ingest journal entries {first}..{last} of a half-written epoch are "
                        "missing from storage"
                    )
            else:
                entries = self.journal.read_after(st.watermark, self._max_entries)
                if not entries:
                    return None
                first, last, done, base = entries[0][0], entries[-1][0], 0, st.next_block
            records = [
                rec
                for _, body in entries
                for rec in records_from_request(ExportTraceServiceRequest.FromString(body))
            ]
            blocks = pack_blocks(records, self.device.params.block_size)
            self._write_epoch(blocks, (first, last, done, base), len(records))
            self.journal.truncate(last)
            return EpochReport(
                len(entries), len(records), len(blocks), time.perf_counter() - started
            )

    def drain_all(self) -> int:
        """Drains until the journal is empty; returns the number of epochs run."""
        epochs = 0
        while self.drain_once() is not None:
            epochs += 1
        return epochs

    def _write_epoch(
        self, blocks: list[bytes], where: tuple[int, int, int, int], spans: int
    ) -> None:
        first, last, done, base = where
        p = self.device.params
        while True:
            chunk = blocks[done : done + p.batch_size]
            ops: list[Read | Write] = [
                Write((base + done + i) % p.blocks, block) for i, block in enumerate(chunk)
            ]
            done += len(chunk)
            st = self.state
            if done < len(blocks):
                new = replace(st, pending=(first, last, done, base))
            else:
                new = IngestState(last, base + len(blocks), st.epochs + 1, st.spans + spans)
            # An epoch of empty requests still commits its watermark: a dummy read.
            self._access(ops or [Read(0)], new)
            if new.pending is None:
                return

    # ------------------------------------------------------------------- read

    def scan(self) -> TracesData:
        """Every stored span, read back through the device (diagnostics and tests)."""
        with self._drain_lock:
            p = self.device.params
            total = min(self.state.next_block, p.blocks)
            blocks: list[bytes] = []
            for start in range(0, total, p.batch_size):
                ids = range(start, min(total, start + p.batch_size))
                got = self._access([Read(b) for b in ids], self.state)
                blocks.extend(b for b in got if b is not None)
            return traces_data(unpack_blocks(blocks))

    # ------------------------------------------------------------ sealed state

    def _access(self, ops: Sequence[Read | Write], state: IngestState) -> list[bytes | None]:
        """Every device batch goes through here: reads commit too (they rewrite paths),
        and the sealed ingest state is bound to the commit number, so each batch
        re-seals it in the same transaction."""
        results = self.device.access_batch(ops, in_transaction=self._saver(state))
        self.state = state
        return results

    def _saver(self, state: IngestState) -> TransactionHook:
        def save(txn: TreeTransaction, seq: int) -> None:
            txn.write_aux(_STATE, self._sealer.seal(_encode(state), self._context(seq)))

        return save

    def _context(self, seq: int) -> bytes:
        return (
            b"otrace-ingest-state\x00" + self.device.params.fingerprint() + struct.pack("<Q", seq)
        )

    def _load_state(self) -> IngestState:
        store = self.device.store
        with store.transaction(self.device.params.tree_id) as txn:  # type: ignore[attr-defined]
            blob = txn.read_aux(_STATE)
        if blob is None:
            if self.device.seq != 0:
                raise IntegrityError("the ingest state is missing from storage")
            return IngestState()
        try:
            plain = self._sealer.unseal(blob, self._context(self.device.seq))
        except IntegrityError:
            raise IntegrityError(
                "the sealed ingest state does not belong to the stored ORAM commit "
                "(tampered or rolled back separately)"
            ) from None
        return _decode(plain)


_STATE_LAYOUT = struct.Struct("<QQQQBQQQQ")  # fixed size: counters never show in the row length


def _encode(state: IngestState) -> bytes:
    pending = state.pending or (0, 0, 0, 0)
    return _STATE_LAYOUT.pack(
        state.watermark,
        state.next_block,
        state.epochs,
        state.spans,
        state.pending is not None,
        *pending,
    )


def _decode(raw: bytes) -> IngestState:
    watermark, next_block, epochs, spans, has_pending, *pending = _STATE_LAYOUT.unpack(raw)
    first, last, done, base = pending
    return IngestState(
        watermark, next_block, epochs, spans, (first, last, done, base) if has_pending else None
    )
