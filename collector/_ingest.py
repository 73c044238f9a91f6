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

The epoch's last batch also commits its index segment (EDB rows) and the
sealed index state; compaction and retention (`maintain`) commit theirs with a
padding read, so every index change is atomic with an ORAM commit.

The CPU work (packing, index rows, merges) is an `EpochBuilder`'s
(`collector._builder`); the next epoch is built while this one is written.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector._builder import BuiltEpoch, EpochBuilder, InlineBuilder
from collector._ingest_state import IngestState, decode_state, encode_state
from collector._intake import IngestOutcome, journal_requests
from collector._journal import Journal
from collector._otlp import Limits
from oram_store import OramParams, Read, TransactionHook, TreeTransaction, Write
from otrace.errors import ConfigError, IntegrityError
from query import (
    EdbRow,
    EdbTable,
    Indexer,
    IndexState,
    MaintenancePlan,
    Segment,
    decode_index,
    encode_index,
    slot_of,
    traces_data,
    unpack_blocks,
)
from tee import StateSealer

__all__ = ["BlockDevice", "EpochReport", "IngestEngine"]

_STATE = "ingest"
_INDEX = "index"
IndexWork = Callable[[Any], IndexState]  # runs on the transaction's SQL connection


class BlockDevice(Protocol):
    """What ingest needs of `PathOram` and `DirectBlockStore`."""

    params: OramParams

    @property
    def seq(self) -> int: ...

    @property
    def store(self) -> object: ...

    def access_batch(
        self,
        ops: Sequence[Read | Write],
        *,
        in_transaction: TransactionHook | None = None,
        paths: int | None = None,
    ) -> list[bytes | None]: ...

    def grouped(self) -> AbstractContextManager[None]: ...


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
        indexer: Indexer,
        limits: Limits | None = None,
        max_epoch_entries: int = 256,
        max_epoch_bytes: int = 4 << 20,
        unindexed: frozenset[str] = frozenset(),
        clock: Callable[[], int] = time.time_ns,
        fence: TransactionHook | None = None,
        builder: EpochBuilder | None = None,
        merge_backlog_segments: int | None = None,
        batches_per_commit: int = 8,
    ) -> None:
        # While the journal holds a backlog, due merges wait until the index holds this
        # many segments (see `maintain`); a query reads one bucket per segment.
        if merge_backlog_segments is None:
            merge_backlog_segments = 4 * indexer.fanout
        if merge_backlog_segments < indexer.fanout:
            raise ConfigError(
                "merge_backlog_segments must be at least the index fanout "
                f"({indexer.fanout}), got {merge_backlog_segments}: a merge takes that "
                "many segments"
            )
        self._merge_backlog_segments = merge_backlog_segments
        if batches_per_commit < 1:
            raise ConfigError(f"batches_per_commit must be at least 1, got {batches_per_commit}")
        # An epoch's batches commit in groups of this many (`BlockDevice.grouped`): one
        # durable commit a group; queries wait for a group, not a batch.
        self._batches_per_commit = batches_per_commit
        self.device = device
        self.journal = journal
        self.indexer = indexer
        self.edb = EdbTable(device.store.engine, device.params.tree_id)  # type: ignore[attr-defined]
        self._sealer = sealer
        self._limits = limits or Limits()
        self._max_entries = max_epoch_entries
        # Bounds an epoch's work (~10k typical spans): queries wait for the epoch's lock.
        self._max_bytes = max_epoch_bytes
        self._clock = clock
        # Runs first in every device commit (a replica's term check); None on a single node.
        self._fence = fence
        # Builds epochs and merges (`collector._builder`); one is built ahead while the
        # previous one is written, or several side by side on a builder with more workers:
        # (the journal entry each follows, its last entry, its future), in journal order.
        self._builder = builder or InlineBuilder(indexer, device.params.block_size, unindexed)
        self._ahead: deque[tuple[int, int, Future[BuiltEpoch]]] = deque()
        self._next_segment = 0
        self._merging: tuple[MaintenancePlan, Future[tuple[Segment, list[EdbRow]]]] | None = None
        # `lock` guards the device and the index for one batch (reentrant: the query
        # executor holds it across a whole query); `_drain_lock` lets one epoch or
        # maintenance pass run at a time, and their CPU work (packing, index rows,
        # merges) happens outside `lock`, so queries wait for a batch, not an epoch.
        self.lock = threading.RLock()
        self._drain_lock = threading.Lock()
        # Set once the journal or the device failed verification: acknowledged spans may
        # be gone, so no more are acknowledged and no answer pretends to be complete.
        self.failure: IntegrityError | None = None
        self.state = self._load_state()
        self.index = self._load_index()
        self._check_index_format()
        journal.resume_after(self.state.watermark)

    # ----------------------------------------------------------------- ingest

    def ingest(self, items: Sequence[tuple[str, bytes]]) -> list[IngestOutcome]:
        """Validates each request and journals the valid spans of all of them in one commit."""
        self._refuse_if_failed()
        return journal_requests(self.journal, items, self._limits)

    def close(self) -> None:
        """Stops the epoch builder (the engine's storage belongs to its caller)."""
        self._ahead.clear()
        self._merging = None
        self._builder.close()

    def journal_depth(self) -> int:
        return self.journal.last_seq - self.state.watermark

    # ------------------------------------------------------------------ drain

    def drain_once(self) -> EpochReport | None:
        """Runs one epoch if the journal holds anything; returns what it stored.

        An `IntegrityError` (a journal truncated or rolled back, a tampered row) stops
        epochs for good: ingest and reads refuse from then on; a restart checks again."""
        self._refuse_if_failed()
        try:
            with self._drain_lock:
                report = self._drain()
            # While epochs keep coming, a merge is committed once built, and a new one
            # waits for the backlog (up to a bound); at the end of the journal it is
            # waited for.
            self.maintain(wait=report is None)
            return report
        except IntegrityError as exc:
            self.failure = exc
            raise

    def _refuse_if_failed(self) -> None:
        if self.failure is not None:
            raise type(self.failure)(f"ingest stopped: {self.failure}")

    def _drain(self) -> EpochReport | None:
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
            built = self._builder.epoch(entries, self._reserve_segment()).result()
        else:
            done, base = 0, st.next_block
            ahead = self._claim_ahead(st)
            if ahead is None:
                entries = self._entries_after(st.watermark)
                if not entries:
                    return None
                ahead = self._builder.epoch(entries, self._reserve_segment())
            built = ahead.result()
        # The next epochs are built while this one is written.
        self._build_ahead(built.last)
        self._write_epoch(built, done, base)
        self.journal.truncate(built.last)
        elapsed = time.perf_counter() - started
        return EpochReport(built.last - built.first + 1, built.spans, len(built.blocks), elapsed)

    def _entries_after(self, seq: int) -> list[tuple[int, bytes]]:
        return self.journal.read_after(seq, self._max_entries, self._max_bytes)

    def _reserve_segment(self) -> int:
        """A segment id no committed or in-flight segment has: epochs built ahead and
        merges take ids in the order they start, not the order they commit."""
        seg_id = max(self.index.next_segment, self._next_segment)
        self._next_segment = seg_id + 1
        return seg_id

    def _build_ahead(self, after: int) -> None:
        """Keeps as many epochs building after journal entry `after` (the one being
        written) as the builder runs side by side. An epoch's blocks and rows do not
        depend on where it will be written, only on its entries."""
        tail = self._ahead[-1][1] if self._ahead else after
        while len(self._ahead) < self._builder.parallel:
            entries = self._entries_after(tail)
            if not entries or (self._ahead and not self._is_full(entries)):
                # Beyond the next epoch only full ones: under light load more workers would
                # cut the journal into many small segments, each with rows and merges.
                return
            future = self._builder.epoch(entries, self._reserve_segment())
            self._ahead.append((tail, entries[-1][0], future))
            tail = entries[-1][0]

    def _is_full(self, entries: Sequence[tuple[int, bytes]]) -> bool:
        """Whether an epoch's entries reached a limit (as many as an epoch takes, or half
        its bytes: `Journal.read_after` stops before the entry that would pass them)."""
        if len(entries) >= self._max_entries:
            return True
        return sum(len(body) for _, body in entries) >= self._max_bytes // 2

    def _claim_ahead(self, st: IngestState) -> Future[BuiltEpoch] | None:
        """The next epoch built ahead, if it starts where the committed state ends (an
        epoch that failed to commit leaves stale ones, dropped here)."""
        if self._ahead and self._ahead[0][0] == st.watermark:
            return self._ahead.popleft()[2]
        self._ahead.clear()
        return None

    def drain_all(self) -> int:
        """Drains until the journal is empty; returns the number of epochs run."""
        epochs = 0
        while self.drain_once() is not None:
            epochs += 1
        return epochs

    def _write_epoch(self, built: BuiltEpoch, done: int, base: int) -> None:
        """Writes the epoch's blocks from number `base` on (its first `done` are written)."""
        p = self.device.params
        blocks = built.blocks
        while True:
            with self._grouped():
                for _ in range(self._batches_per_commit):
                    chunk = blocks[done : done + p.batch_size]
                    ops: list[Read | Write] = [
                        Write((base + done + i) % p.blocks, data) for i, data in enumerate(chunk)
                    ]
                    done += len(chunk)
                    st = self.state
                    work: IndexWork | None = None
                    if done < len(blocks):
                        new = replace(st, pending=(built.first, built.last, done, base))
                    else:
                        new = replace(
                            st,
                            watermark=built.last,
                            next_block=base + len(blocks),
                            epochs=st.epochs + 1,
                            spans=st.spans + built.spans,
                            pending=None,
                        )
                        work = self._index_epoch(built, base)
                    # An epoch of empty requests still commits its watermark: a padding read.
                    self._access(ops or [self._padding_read()], new, work)
                    if new.pending is None:
                        return

    @contextmanager
    def _grouped(self) -> Iterator[None]:
        """The device batches inside commit together (`BlockDevice.grouped`), under the
        device lock; if the group does not commit, the engine's state is put back too."""
        with self.lock:
            state, index = self.state, self.index
            try:
                with self.device.grouped():
                    yield
            except BaseException:
                self.state, self.index = state, index
                raise

    def _index_epoch(self, built: BuiltEpoch, base: int) -> IndexWork | None:
        if built.segment is None:
            return None
        segment = built.segment.moved(base)  # built with its blocks counted from 0

        def write(conn: Any) -> IndexState:
            self.edb.insert(conn, built.rows)
            # Applied to the index as it is at commit time (a merge may have committed
            # since this epoch was built).
            return self.indexer.with_segment(self.index, segment, built.operations)

        return write

    def maintain(self, *, wait: bool = True) -> bool:
        """Compaction and retention: drops expired or overwritten segments, merges one group.

        Only epochs and maintenance change the index, one at a time, so the merge is
        computed (by the builder) from rows read outside the device lock, which is then
        held only to commit (delete, insert, sealed state) with one padding read. With
        `wait` false a merge still being built is left to a later call, and epochs go on
        meanwhile: a plan stays valid, since only maintenance removes segments; and a
        new merge may wait for the journal to drain (`_merge_waits`)."""
        with self._drain_lock:
            if self._merging is not None:
                plan, future = self._merging
                if not (wait or future.done()):
                    return False
                self._merging = None
                self._commit_plan(plan, *future.result())
                return True
            plan = self.indexer.plan(self.index, self._clock(), self.live_from())
            if plan.merge and not wait and self._merge_waits():
                plan = replace(plan, merge=())  # retiring is cheap: done at once
            if not plan.merge:
                if plan:
                    self._commit_plan(plan, None, [])
                return bool(plan)
            old = self._read_segments([s.id for s in plan.merge])
            future = self._builder.merge(self._reserve_segment(), plan.merge, old)
            if wait or future.done():
                self._commit_plan(plan, *future.result())
            else:
                self._merging = (plan, future)
            return True

    def _merge_waits(self) -> bool:
        """Whether a due merge waits for the journal to drain. A merge takes a builder from
        the epochs (a level-1 merge of ~108k spans, ~3 s of a core), so while acknowledged
        spans wait in the journal it is put off, LSM-style, until the index holds
        `merge_backlog_segments` segments: under sustained overload merges still run, and
        a query reads at most about that many plus a fanout."""
        backlog = self.journal_depth() > 0
        return backlog and len(self.index.segments) < self._merge_backlog_segments

    def _commit_plan(
        self, plan: MaintenancePlan, merged: Segment | None, rows: list[EdbRow]
    ) -> None:
        def work(conn: Any) -> IndexState:
            self.edb.delete_segments(conn, [s.id for s in (*plan.retire, *plan.merge)])
            self.edb.insert(conn, rows)
            return self.indexer.with_plan(self.index, plan, merged)

        self._access([self._padding_read()], self.state, work)

    def _read_segments(self, segments: Sequence[int]) -> list[EdbRow]:
        with self.device.store.engine.connect() as conn:  # type: ignore[attr-defined]
            return self.edb.segment_rows(conn, segments)

    def _padding_read(self) -> Read:
        return Read(secrets.randbelow(self.device.params.blocks))

    # ------------------------------------------------------------------- read

    def scan(self) -> TracesData:
        """Every stored span, read back through the device (diagnostics and tests)."""
        with self.lock:
            p = self.device.params
            total = min(self.state.next_block, p.blocks)
            blocks: list[bytes] = []
            for start in range(0, total, p.batch_size):
                ids = range(start, min(total, start + p.batch_size))
                got = self._access([Read(b) for b in ids], self.state)
                blocks.extend(b for b in got if b is not None)
            return traces_data(unpack_blocks(blocks))

    def live_from(self) -> int:
        """The oldest absolute block number the ring has not overwritten."""
        return max(0, self.state.next_block - self.device.params.blocks)

    def read_blocks(self, wanted: Sequence[int], batches: int, width: int) -> dict[int, bytes]:
        """Exactly `batches` device batches of `width` paths, serving as many of `wanted`
        (absolute block numbers, in priority order) as fit; the rest is padding."""
        p = self.device.params
        with self.lock:
            self._refuse_if_failed()
            lowest, stop = self.live_from(), self.state.next_block
            live = [b for b in dict.fromkeys(wanted) if lowest <= b < stop]
            out: dict[int, bytes] = {}
            for i in range(batches):
                chunk = live[i * width : (i + 1) * width]
                ops = [Read(b % p.blocks) for b in chunk] or [self._padding_read()]
                got = self._access(ops, self.state, paths=width)
                out.update(
                    (b, data) for b, data in zip(chunk, got, strict=False) if data is not None
                )
            return out

    # ------------------------------------------------------------ sealed state

    def _access(
        self,
        ops: Sequence[Read | Write],
        state: IngestState,
        work: IndexWork | None = None,
        *,
        paths: int | None = None,
    ) -> list[bytes | None]:
        """Every device batch goes through here: reads commit too (they rewrite paths),
        and the sealed ingest state is bound to the commit number, so each batch
        re-seals it in the same transaction, with the index change `work` if any."""
        done: list[tuple[IngestState, IndexState]] = []
        with self.lock:
            results = self.device.access_batch(
                ops, in_transaction=self._saver(state, work, done), paths=paths
            )
            self.state, self.index = done[0]
        return results

    def _saver(
        self,
        state: IngestState,
        work: IndexWork | None,
        done: list[tuple[IngestState, IndexState]],
    ) -> TransactionHook:
        def save(txn: TreeTransaction, seq: int) -> None:
            if self._fence is not None:
                self._fence(txn, seq)  # refused: the whole batch rolls back
            index = self.index
            if work is not None:
                index = work(txn.connection)  # type: ignore[attr-defined]
                gen = state.index_gen + 1
                blob = self._sealer.seal(encode_index(index), self._index_context(gen))
                txn.write_aux(_INDEX, blob)
                new = replace(state, index_gen=gen, index_digest=hashlib.sha256(blob).digest())
            else:
                new = state
            txn.write_aux(_STATE, self._sealer.seal(encode_state(new), self._context(seq)))
            done.append((new, index))

        return save

    def _context(self, seq: int) -> bytes:
        return (
            b"otrace-ingest-state\x00" + self.device.params.fingerprint() + struct.pack("<Q", seq)
        )

    def _index_context(self, gen: int) -> bytes:
        return b"otrace-index-state\x00" + self.device.params.fingerprint() + struct.pack("<Q", gen)

    def _load_index(self) -> IndexState:
        if self.state.index_gen == 0:
            return IndexState()
        store = self.device.store
        with store.transaction(self.device.params.tree_id) as txn:  # type: ignore[attr-defined]
            blob = txn.read_aux(_INDEX)
        if blob is None or not hmac.compare_digest(
            hashlib.sha256(blob).digest(), self.state.index_digest
        ):
            raise IntegrityError(
                "the sealed index state in storage is not the one the ORAM commit names "
                "(missing, tampered or rolled back separately)"
            )
        return decode_index(self._sealer.unseal(blob, self._index_context(self.state.index_gen)))

    def _check_index_format(self) -> None:
        """Opens one bucket of the oldest segment, so that an index an earlier otrace wrote
        is refused at start, with its version, rather than at the first merge that reads
        it (which would stop ingest) or the first query. Bucket 0 of every segment exists:
        the storage learns nothing from this read but that the node started."""
        if not self.index.segments:
            return
        slot = slot_of(self.index.segments[0].id, 0)
        with self.device.store.engine.connect() as conn:  # type: ignore[attr-defined]
            rows = self.edb.lookup(conn, [slot])
        if not rows:
            raise IntegrityError("an encrypted index bucket is missing from storage")
        self.indexer.codec.open_raw(rows[0])

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
        return decode_state(plain)
