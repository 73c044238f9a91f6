"""The epoch builder: an epoch's CPU work, done beside the enclave's I/O.

Turning journal entries into data blocks and an index segment (parse, keywords,
packing, trapdoors, bucket encryption) and merging index segments are pure
functions of their inputs and the enclave's keys. `IngestEngine` hands them to
an `EpochBuilder` and keeps for itself what touches storage and sealed state:
journal reads, ORAM batches, commits.

- `InlineBuilder` runs them in the caller's thread (tests, replicas).
- `ProcessBuilder` runs them in worker processes of the enclave (the node's
  default: two). An epoch's blocks and rows do not depend on where it will be
  written, so the engine builds the next epochs side by side while it writes
  one, and the enclave process's GIL stays free for the ingest ecalls that
  acknowledge Exports. The builders are part of the enclave (an SGX enclave
  would run them on more threads): they receive the index and EDB value keys
  from their parent at start, over pipes between the enclave processes, and
  hold no storage handle. They exit when their parent does.
"""

from __future__ import annotations

import abc
import atexit
import gc
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from query import (
    EdbCodec,
    EdbRow,
    EpochSpans,
    Indexer,
    Segment,
    pack_blocks,
    records_from_body,
)

__all__ = ["BuiltEpoch", "EpochBuilder", "InlineBuilder", "ProcessBuilder", "build_epoch"]

Entries = Sequence[tuple[int, bytes]]  # (journal seq, Export request body)
# How much lower than the enclave process the builders run. Two builders at the enclave's
# priority took the cores from the ingest ecalls: `otrace bench ingest --spans 200000`
# measured Export p99 469 ms (ORAM 9,986 spans/s); at niceness 5, 241 ms (10,882); at
# 10, 186 ms (11,820); at 19, 263 and 253 ms (10,457, 10,987): no better than 10.
NICENESS = 10
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BuiltEpoch:
    """Journal entries `first..last` as blocks, and their segment (its blocks numbered
    from 0: the engine moves it to where it writes them)."""

    first: int
    last: int
    blocks: list[bytes]
    spans: int
    segment: Segment | None  # None when the entries held no spans
    rows: list[EdbRow]
    operations: frozenset[tuple[str, str]]  # (service, span name)


def build_epoch(
    indexer: Indexer,
    block_size: int,
    unindexed: frozenset[str],
    entries: Entries,
    seg_id: int,
) -> BuiltEpoch:
    """Deterministic in its blocks for the same entries, which makes resuming a
    half-written epoch safe (only the rows' nonces differ). Independent of where the
    blocks will be written, so several epochs are built side by side."""
    records = [rec for _, body in entries for rec in records_from_body(body, unindexed)]
    packed = pack_blocks(records, block_size)
    first, last = entries[0][0], entries[-1][0]
    if not packed:
        return BuiltEpoch(first, last, [], 0, None, [], frozenset())
    operations = frozenset(r.operation for r in records)
    epoch = EpochSpans.of(
        0,
        [[r.keywords for r in b.records] for b in packed],
        t_min=min(r.start_ns for r in records),
        t_max=max(r.start_ns for r in records),
        spans=len({(r.trace_id, r.span_id) for r in records}),
        operations=operations,
    )
    segment, rows = indexer.epoch_segment(seg_id, epoch)
    blocks = [b.data for b in packed]
    return BuiltEpoch(first, last, blocks, len(records), segment, rows, operations)


class EpochBuilder(abc.ABC):
    """Where epochs are built and segments merged; results come back as futures."""

    parallel = 1  # epochs worth building at once

    @abc.abstractmethod
    def epoch(self, entries: Entries, seg_id: int) -> Future[BuiltEpoch]: ...

    @abc.abstractmethod
    def merge(
        self, seg_id: int, group: Sequence[Segment], rows: Sequence[EdbRow]
    ) -> Future[tuple[Segment, list[EdbRow]]]: ...

    def close(self) -> None:  # noqa: B027 (optional: an inline builder holds nothing)
        """Stops the builder: queued work is cancelled, work in progress finishes."""


class InlineBuilder(EpochBuilder):
    """Builds in the calling thread: each future is done when returned."""

    def __init__(
        self, indexer: Indexer, block_size: int, unindexed: frozenset[str] = frozenset()
    ) -> None:
        self._indexer = indexer
        self._block_size = block_size
        self._unindexed = unindexed

    def epoch(self, entries: Entries, seg_id: int) -> Future[BuiltEpoch]:
        return _done(
            lambda: build_epoch(self._indexer, self._block_size, self._unindexed, entries, seg_id)
        )

    def merge(
        self, seg_id: int, group: Sequence[Segment], rows: Sequence[EdbRow]
    ) -> Future[tuple[Segment, list[EdbRow]]]:
        return _done(lambda: self._indexer.merged_segment(seg_id, group, rows))


def _done(work: Callable[[], T]) -> Future[T]:
    future: Future[T] = Future()
    try:
        future.set_result(work())
    except Exception as exc:  # handed to whoever asks for the result, as a pool would
        future.set_exception(exc)
    return future


class ProcessBuilder(EpochBuilder):
    """Builds in `workers` child processes of the enclave, started with the keys they
    need; as many epochs are built side by side (and merges beside them)."""

    def __init__(
        self,
        index_key: bytes,
        edb_key: bytes,
        block_size: int,
        unindexed: frozenset[str] = frozenset(),
        *,
        workers: int = 1,
    ) -> None:
        self.parallel = workers
        # The enclave process is a daemon of the host's, and multiprocessing refuses
        # children to daemons because they could be orphaned. The builder exits by itself
        # once orphaned (`_exit_with`), so this process lifts the flag for itself.
        multiprocessing.current_process().daemon = False
        self._initargs = (index_key, edb_key, block_size, unindexed, os.getpid())
        self._pool = self._start()
        # The enclave process is itself a multiprocessing child, which joins its children
        # as it exits and would wait forever for a worker that waits for work; finalizers
        # of priority >= 0 run before that join, higher first. Above the pool's own queue
        # (priority 10), which must still be open to carry the worker its stop signal.
        multiprocessing.util.Finalize(None, self.close, exitpriority=100)

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.parallel,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=self._initargs,
        )
        # A pool starts a worker when work finds none idle, and a spawned worker first
        # imports otrace (~1.5 s): started now, the first epochs do not wait for that.
        for _ in range(self.parallel):
            pool.submit(_ready)
        return pool

    def _submit(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        """A builder killed from outside (the OOM killer, say) fails the work it had;
        the next piece of work starts a new one, and the epoch is retried from the
        journal."""
        try:
            return self._pool.submit(work, *args)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            return self._pool.submit(work, *args)

    def epoch(self, entries: Entries, seg_id: int) -> Future[BuiltEpoch]:
        return self._submit(_child_epoch, list(entries), seg_id)

    def merge(
        self, seg_id: int, group: Sequence[Segment], rows: Sequence[EdbRow]
    ) -> Future[tuple[Segment, list[EdbRow]]]:
        return self._submit(_child_merge, seg_id, list(group), list(rows))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------ in the child

_child: tuple[Indexer, int, frozenset[str]] | None = None


def _start_child(
    index_key: bytes, edb_key: bytes, block_size: int, unindexed: frozenset[str], parent: int
) -> None:
    global _child
    # Stopped by the enclave (or `_exit_with`), not by the terminal's Ctrl-C to the group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _child = (Indexer(index_key, EdbCodec(edb_key)), block_size, unindexed)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    # Builders run ahead of the writer; the enclave's own thread acknowledges Exports
    # and writes the ORAM, so it gets a core first (see NICENESS).
    os.nice(NICENESS)
    # At exit the interpreter's last collections walk every object its imports made
    # (0.3 s, which each node stop waited for). A builder holds no file or connection
    # whose finalizer matters, so they are skipped: the OS takes back the memory.
    atexit.register(gc.freeze)


def _ready() -> None:
    """The work that starts a builder (see `ProcessBuilder._start`)."""


def _exit_with(parent: int) -> None:
    """A builder outliving its enclave (SIGKILLed) would hold keys for nothing: exit."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _child_epoch(entries: Entries, seg_id: int) -> BuiltEpoch:
    assert _child is not None
    indexer, block_size, unindexed = _child
    return build_epoch(indexer, block_size, unindexed, entries, seg_id)


def _child_merge(
    seg_id: int, group: Sequence[Segment], rows: Sequence[EdbRow]
) -> tuple[Segment, list[EdbRow]]:
    assert _child is not None
    return _child[0].merged_segment(seg_id, group, rows)
