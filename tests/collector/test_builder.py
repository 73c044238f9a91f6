"""The epoch builder (`collector._builder`) and the engine's pipeline around it: the next
epoch is built while one is written, merges are built while epochs go on, and a failed
commit or a killed enclave loses nothing and leaves nothing behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import event

from collector import Node
from collector._builder import BuiltEpoch, EpochBuilder, InlineBuilder, ProcessBuilder
from collector._ingest import IngestEngine
from collector._journal import Journal
from oram_store import OramParams, PathOram, SqlBucketStore
from otrace.bench._loadgen import build_requests
from otrace.errors import ConfigError, IntegrityError, StorageError
from query import (
    EdbCodec,
    EdbRow,
    Indexer,
    QueryBudget,
    QueryExecutor,
    Segment,
    trace_keyword,
    trapdoor_for,
)
from tee import Sealer
from tests.collector.conftest import node_settings, running, spans_of, stored
from tests.collector.otlp_helpers import grpc_export, request

INDEX_KEY, EDB_KEY = b"\x05" * 32, b"\x04" * 32
PROTOBUF = "application/x-protobuf"


class HeldBuilder(EpochBuilder):
    """Inline work whose merge results are handed over only when `release()` is called,
    as a builder process still busy with them would."""

    def __init__(self, inline: InlineBuilder) -> None:
        self.inline = inline
        self.held: list[tuple[Future[Any], Future[Any]]] = []
        self.hold = True

    def epoch(self, entries: Sequence[tuple[int, bytes]], seg_id: int) -> Future[BuiltEpoch]:
        return self.inline.epoch(entries, seg_id)

    def merge(
        self, seg_id: int, group: Sequence[Segment], rows: Sequence[EdbRow]
    ) -> Future[tuple[Segment, list[EdbRow]]]:
        done = self.inline.merge(seg_id, group, rows)
        if not self.hold:
            return done
        later: Future[tuple[Segment, list[EdbRow]]] = Future()
        self.held.append((done, later))
        return later

    def release(self) -> None:
        for done, later in self.held:
            later.set_result(done.result())
        self.held.clear()


def _engine(
    tmp_path: Path, builder: EpochBuilder | None = None, batch: int = 4, **kw: Any
) -> IngestEngine:
    store = SqlBucketStore(f"sqlite:///{tmp_path / 'store.sqlite'}")
    sealer = Sealer.from_key(b"\x01" * 32)
    params = OramParams("spans", blocks=1024, block_size=4096, batch_size=batch)
    if store.load_meta("spans") is None:
        oram = PathOram.create(store, params, key=b"\x02" * 32, sealer=sealer, cache_levels=2)
    else:
        oram = PathOram.open(store, "spans", key=b"\x02" * 32, sealer=sealer, cache_levels=2)
    journal = Journal.sqlite(str(tmp_path / "journal.sqlite"), b"\x03" * 32)
    indexer = Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2)
    return IngestEngine(oram, journal, sealer, indexer=indexer, builder=builder, **kw)


def _ingest(engine: IngestEngine, requests: int, spans: int = 30) -> None:
    for i in range(requests):
        body = request(spans, f"svc-{i % 3}").SerializeToString()
        assert engine.ingest([(PROTOBUF, body)])[0].ok


def _stored(engine: IngestEngine) -> Counter[tuple[bytes, bytes]]:
    data = engine.scan()
    return Counter(
        (s.trace_id, s.span_id)
        for rs in data.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    )


def _assert_index_consistent(engine: IngestEngine) -> None:
    ids = [s.id for s in engine.index.segments]
    assert len(ids) == len(set(ids))
    assert all(s < engine.index.next_segment for s in ids)
    with engine.device.store.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = engine.edb.segment_rows(conn, ids)
    assert Counter(r.segment for r in rows) == {s.id: s.rows for s in engine.index.segments}


def test_process_builder_packs_the_same_blocks_and_postings_as_inline() -> None:
    entries = [(i + 1, request(40, f"svc-{i}").SerializeToString()) for i in range(3)]
    inline = InlineBuilder(Indexer(INDEX_KEY, EdbCodec(EDB_KEY)), 4096).epoch(entries, 3)
    process = ProcessBuilder(INDEX_KEY, EDB_KEY, 4096)
    try:
        there = process.epoch(entries, 3).result(timeout=60)
    finally:
        process.close()
    here = inline.result()
    assert (there.first, there.last, there.spans) == (1, 3, 120)
    assert there.blocks == here.blocks  # packing is deterministic
    assert there.segment == here.segment
    codec = EdbCodec(EDB_KEY)
    # Same postings in the same buckets; only the buckets' nonces differ.
    assert [sorted(codec.open_raw(r)) for r in there.rows] == [
        sorted(codec.open_raw(r)) for r in here.rows
    ]
    assert [r.value for r in there.rows] != [r.value for r in here.rows]


def test_a_killed_builder_fails_its_work_and_the_next_starts_a_new_one() -> None:
    entries = [(1, request(5).SerializeToString())]
    builder = ProcessBuilder(INDEX_KEY, EDB_KEY, 4096)
    try:
        assert builder.epoch(entries, 1).result(timeout=60).spans == 5
        (child,) = multiprocessing.active_children()
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(timeout=10)
        # Work handed over before the pool saw the death fails; the next starts anew.
        try:
            built = builder.epoch(entries, 2).result(timeout=60)
        except BrokenProcessPool:
            built = builder.epoch(entries, 3).result(timeout=60)
        assert built.spans == 5
        (again,) = multiprocessing.active_children()
        assert again.pid != child.pid
    finally:
        builder.close()


def _builder_then_return() -> None:
    builder = ProcessBuilder(INDEX_KEY, EDB_KEY, 4096)
    builder.epoch([(1, request(1).SerializeToString())], 1).result(timeout=60)


def test_an_enclave_process_with_a_builder_exits_when_its_work_is_done() -> None:
    # The enclave is a multiprocessing child: as it exits it joins its children, and
    # a builder waiting for work would hold it forever (the host then kills it after
    # its own timeout, on every stop).
    enclave = multiprocessing.get_context("spawn").Process(target=_builder_then_return)
    enclave.start()
    enclave.join(timeout=30)
    assert enclave.exitcode == 0


def _open_files(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile
    return out


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_nodes_builders_hold_no_storage_or_platform_file(node: Node) -> None:
    # The builder gets two keys and work items, nothing else: not the ORAM, the journal,
    # the platform's sealing or attestation key files (SECURITY.md).
    assert node.grpc is not None and node.enclave is not None
    grpc_export(node.grpc.port, request(20).SerializeToString())
    assert len(spans_of(stored(node))) == 20  # the builder built that epoch
    enclave = node.enclave.pid
    assert enclave is not None
    builders = _children(enclave)
    assert len(builders) == node.settings.build_workers == 2
    data, platform = str(node.settings.data_dir), str(node.settings.platform_dir)
    # The enclave itself holds the store open (so the check below can fail) ...
    assert any(f.startswith(data) for f in _open_files(enclave))
    # ... its builders hold nothing under either directory.
    for builder in builders:
        held = _open_files(builder)
        assert not [f for f in held if f.startswith((data, platform))], held


def _builder_then_wait(ready: Any) -> None:
    builder = ProcessBuilder(INDEX_KEY, EDB_KEY, 4096)
    builder.epoch([(1, request(1).SerializeToString())], 1).result(timeout=60)
    ready.put(multiprocessing.active_children()[0].pid)
    time.sleep(600)


def test_the_builder_exits_when_its_enclave_is_killed() -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    enclave = ctx.Process(target=_builder_then_wait, args=(ready,))
    enclave.start()
    child = ready.get(timeout=60)
    os.kill(enclave.pid, signal.SIGKILL)  # type: ignore[arg-type]
    enclave.join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return  # gone: it held the index keys for nothing
        if _is_zombie(child):
            return
        time.sleep(0.1)
    pytest.fail("the builder process outlived its enclave by 10 s")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_epochs_are_built_ahead_and_all_stored_once(tmp_path: Path) -> None:
    engine = _engine(tmp_path, max_epoch_entries=2)
    _ingest(engine, 9)
    assert engine.drain_all() == 5
    assert sorted(_stored(engine).values()) == [1] * 270
    _assert_index_consistent(engine)


class FailingDevice:
    """The ORAM, refusing one commit: the epoch stops half-written."""

    def __init__(self, device: Any, fail_at: int) -> None:
        self._device, self._calls, self._fail_at = device, 0, fail_at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)

    def access_batch(self, ops: Any, **kw: Any) -> Any:
        self._calls += 1
        if self._calls == self._fail_at:
            raise StorageError("injected: the database went away")
        return self._device.access_batch(ops, **kw)


class SideBySide(InlineBuilder):
    """Asks the engine for `parallel` epochs at once, as a pool of that many workers."""

    parallel = 3


@pytest.mark.parametrize("parallel", [1, 3])
@pytest.mark.parametrize("fail_at", [1, 3, 6])
def test_a_failed_commit_drops_the_epochs_built_ahead_and_loses_nothing(
    tmp_path: Path, fail_at: int, parallel: int
) -> None:
    indexer = Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2)
    builder = (SideBySide if parallel == 3 else InlineBuilder)(indexer, 4096)
    engine = _engine(tmp_path, builder, max_epoch_entries=2)
    engine.device = FailingDevice(engine.device, fail_at)
    _ingest(engine, 7)
    with pytest.raises(StorageError, match="injected"):
        engine.drain_all()
    assert engine.failure is None  # a storage error is retried, not latched
    engine.drain_all()
    assert sorted(_stored(engine).values()) == [1] * 210
    _assert_index_consistent(engine)
    # And after a restart from what was committed.
    engine.journal.close()
    again = _engine(tmp_path)
    assert sorted(_stored(again).values()) == [1] * 210
    _assert_index_consistent(again)


@pytest.mark.parametrize("parallel", [1, 3])
@pytest.mark.parametrize("fail_at", [2, 5])
def test_an_epoch_left_half_written_resumes_where_it_stopped(
    tmp_path: Path, fail_at: int, parallel: int
) -> None:
    # One block per ORAM batch and commit, and epochs of several blocks: the failure stops
    # an epoch between its commits (`pending`), with epochs built ahead queued behind it.
    indexer = Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2)
    builder = (SideBySide if parallel == 3 else InlineBuilder)(indexer, 4096)
    engine = _engine(tmp_path, builder, batch=1, max_epoch_entries=2, batches_per_commit=1)
    engine.device = FailingDevice(engine.device, fail_at)
    traces = [os.urandom(16) for _ in range(6)]
    for i, trace in enumerate(traces):
        body = request(150, f"svc-{i % 3}", trace_id=trace).SerializeToString()
        assert engine.ingest([(PROTOBUF, body)])[0].ok
    with pytest.raises(StorageError, match="injected"):
        engine.drain_all()
    assert engine.state.pending is not None  # half-written: some of its blocks are in
    engine.drain_all()
    _assert_found(engine, indexer, traces, 150)
    engine.journal.close()
    again = _engine(tmp_path, batch=1)  # and after a restart from what was committed
    assert sorted(_stored(again).values()) == [1] * 900
    _assert_index_consistent(again)


@pytest.mark.parametrize("fail_at", [None, 2, 5])
def test_an_epochs_batches_commit_in_groups_and_a_failed_group_is_undone_whole(
    tmp_path: Path, fail_at: int | None
) -> None:
    # One block per ORAM batch, three batches per commit, one epoch of many blocks.
    engine = _engine(tmp_path, batch=1, max_epoch_entries=6, batches_per_commit=3)
    at_commit: list[int] = []  # the ORAM's commit number as each transaction commits
    event.listen(
        engine.device.store.engine,  # type: ignore[attr-defined]
        "commit",
        lambda _conn: at_commit.append(engine.device.seq),
    )
    if fail_at is not None:
        engine.device = FailingDevice(engine.device, fail_at)
    # Fixed ids: the number of blocks the epoch packs into does not vary between runs.
    traces = [bytes([i + 1]) * 16 for i in range(6)]
    for i, trace in enumerate(traces):
        body = request(150, f"svc-{i % 3}", trace_id=trace).SerializeToString()
        assert engine.ingest([(PROTOBUF, body)])[0].ok
    if fail_at is not None:
        with pytest.raises(StorageError, match="injected"):
            engine.drain_all()
        # The failed group left nothing, in storage or in the engine: the epoch stands
        # where the last group committed (after 3 of its blocks, or before it began).
        done = 3 * ((fail_at - 1) // 3)
        assert engine.device.seq == done == (at_commit[-1] if at_commit else 0)
        assert engine.state.pending == (None if done == 0 else (1, 6, done, 0))
    engine.drain_all()
    blocks = engine.state.next_block
    assert blocks >= 5, blocks  # (6 or 7) batch 5 exists: two groups at least
    first = at_commit[0]
    groups = [b - a for a, b in zip([0, *at_commit], at_commit, strict=False)]
    # The epoch's batches in groups of 3 (its last group smaller), then one maintenance
    # commit per padding read.
    assert first == 3 and groups[: blocks // 3] == [3] * (blocks // 3)
    assert all(g <= 3 for g in groups)
    _assert_found(engine, Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2), traces, 150)
    engine.journal.close()
    again = _engine(tmp_path, batch=1)
    assert sorted(_stored(again).values()) == [1] * 900


def _assert_found(engine: IngestEngine, indexer: Indexer, traces: list[bytes], spans: int) -> None:
    """Every span stored once, and each trace found by the index where it was written."""
    assert sorted(_stored(engine).values()) == [1] * (len(traces) * spans)
    _assert_index_consistent(engine)
    executor = QueryExecutor(
        engine,
        _edb_lookup(engine),
        indexer,
        budget=QueryBudget.from_reads(8, 8, engine.device.params.batch_size),
    )
    for trace in traces:
        found = executor.get_trace(trapdoor_for(INDEX_KEY, trace_keyword(trace)))
        assert {r.trace_id for r in found.records} == {trace}
        assert len(found.records) == spans


def test_an_index_of_an_earlier_format_is_refused_at_start(tmp_path: Path) -> None:
    # Before, a store an earlier otrace wrote opened, acknowledged Exports, then failed
    # at the first merge that read an old segment and stopped ingest for good.
    engine = _engine(tmp_path)
    _ingest(engine, 2)
    engine.drain_all()
    engine.journal.close()
    seg = engine.index.segments[0]
    store = engine.device.store.engine  # type: ignore[attr-defined]
    with store.begin() as conn:
        (row,) = engine.edb.lookup(conn, [seg.id << 32])
        where = seg.id.to_bytes(8, "big") + (0).to_bytes(4, "big")
        aead = AESGCM(EDB_KEY)
        plain = aead.decrypt(row.value[:12], row.value[12:], b"otrace/edb/v5\x00" + where)
        value = row.value[:12] + aead.encrypt(row.value[:12], plain, b"otrace/edb/v4\x00" + where)
        conn.execute(
            engine.edb.table.update().where(engine.edb.table.c.slot == row.slot),
            {"value": value},
        )
    with pytest.raises(IntegrityError, match=r"earlier otrace \(index format v4\)"):
        _engine(tmp_path)


def test_epochs_built_side_by_side_are_found_where_they_were_written(tmp_path: Path) -> None:
    # Each epoch is built with its blocks counted from 0, before its place is known; the
    # index must still point every trace at the blocks it was written to, also after
    # merges have moved postings of segments with different first blocks into one.
    indexer = Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2)
    # Merges start as soon as due (bound = fanout), between the epochs built ahead.
    engine = _engine(
        tmp_path, SideBySide(indexer, 4096), max_epoch_entries=1, merge_backlog_segments=2
    )
    traces = [os.urandom(16) for _ in range(9)]
    for i, trace in enumerate(traces):
        body = request(30, f"svc-{i % 3}", trace_id=trace).SerializeToString()
        assert engine.ingest([(PROTOBUF, body)])[0].ok
    assert engine.drain_all() == 9
    assert max(s.level for s in engine.index.segments) >= 2  # merged, and merged again
    assert engine.index.segments[-1].first_block > 0
    _assert_found(engine, indexer, traces, 30)


class Recording(SideBySide):
    def __init__(self, indexer: Indexer) -> None:
        super().__init__(indexer, 4096)
        self.sizes: list[int] = []

    def epoch(self, entries: Sequence[tuple[int, bytes]], seg_id: int) -> Future[BuiltEpoch]:
        self.sizes.append(len(entries))
        return super().epoch(entries, seg_id)


def test_beyond_the_next_epoch_only_full_ones_are_built_ahead(tmp_path: Path) -> None:
    # Under light load a second worker would otherwise cut the journal into small epochs.
    builder = Recording(Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2))
    engine = _engine(tmp_path, builder, max_epoch_entries=4)
    _ingest(engine, 10)
    assert engine.drain_once() is not None
    # The epoch written (4), the next (4, full); not the 2 left, which would be a third.
    assert builder.sizes == [4, 4]
    assert engine.drain_once() is not None
    assert builder.sizes == [4, 4, 2]  # the next epoch is built ahead whatever its size
    engine.drain_all()
    assert sorted(_stored(engine).values()) == [1] * 300


def _edb_lookup(engine: IngestEngine) -> Any:
    def lookup(slots: Any) -> Any:
        with engine.device.store.engine.connect() as conn:  # type: ignore[attr-defined]
            return engine.edb.lookup(conn, slots)

    return lookup


def test_epochs_go_on_while_a_merge_is_being_built(tmp_path: Path) -> None:
    indexer = Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2)
    held = HeldBuilder(InlineBuilder(indexer, 4096))
    # Merges start as soon as due (bound = fanout), backlog or not.
    engine = _engine(tmp_path, held, max_epoch_entries=1, merge_backlog_segments=2)
    _ingest(engine, 6)
    for _ in range(4):
        assert engine.drain_once() is not None
    # Two segments asked for a merge after the second epoch; it is still being built,
    # and the epochs after it committed regardless, under segment ids of their own.
    assert len(held.held) == 1
    assert [s.level for s in engine.index.segments] == [0, 0, 0, 0]
    held.release()
    assert engine.maintain(wait=False)  # the merge commits now, on the current index
    assert sorted(s.level for s in engine.index.segments) == [0, 0, 1]
    _assert_index_consistent(engine)
    held.hold = False  # merges done at once from here on
    engine.drain_all()
    assert sorted(_stored(engine).values()) == [1] * 180
    _assert_index_consistent(engine)


class MergeRecording(InlineBuilder):
    """Inline work that records the levels of each group it is asked to merge."""

    def __init__(self, indexer: Indexer) -> None:
        super().__init__(indexer, 4096)
        self.merges: list[tuple[int, ...]] = []

    def merge(
        self, seg_id: int, group: Sequence[Segment], rows: Sequence[EdbRow]
    ) -> Future[tuple[Segment, list[EdbRow]]]:
        self.merges.append(tuple(s.level for s in group))
        return super().merge(seg_id, group, rows)


def _ingest_traces(engine: IngestEngine, count: int, spans: int = 30) -> list[bytes]:
    traces = [os.urandom(16) for _ in range(count)]
    for i, trace in enumerate(traces):
        body = request(spans, f"svc-{i % 3}", trace_id=trace).SerializeToString()
        assert engine.ingest([(PROTOBUF, body)])[0].ok
    return traces


def test_merges_wait_while_the_journal_has_a_backlog_then_compact_it(tmp_path: Path) -> None:
    # A merge takes a builder from the epochs draining a burst: it waits for the journal.
    indexer = Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2)
    builder = MergeRecording(indexer)
    engine = _engine(tmp_path, builder, max_epoch_entries=1)  # bound: 4 x fanout = 8
    traces = _ingest_traces(engine, 6)
    for _ in range(5):
        assert engine.drain_once() is not None
        assert engine.journal_depth() > 0
    assert builder.merges == []  # two were due since the second epoch
    assert [s.level for s in engine.index.segments] == [0] * 5
    assert engine.drain_all() == 1  # the last epoch; merges run once the journal is empty
    assert engine.journal_depth() == 0
    assert 1 in {s.level for s in engine.index.segments}
    while engine.maintain():
        pass
    assert sorted(s.level for s in engine.index.segments) == [1, 2]  # 6 = 4 + 2 epochs
    _assert_found(engine, indexer, traces, 30)


def test_merges_start_during_a_backlog_once_the_index_holds_the_bound(tmp_path: Path) -> None:
    # Sustained overload still merges: a query never reads more than about the bound.
    indexer = Indexer(INDEX_KEY, EdbCodec(EDB_KEY), fanout=2)
    builder = MergeRecording(indexer)
    engine = _engine(tmp_path, builder, max_epoch_entries=1, merge_backlog_segments=5)
    traces = _ingest_traces(engine, 12)
    for _ in range(4):
        assert engine.drain_once() is not None
    assert builder.merges == []
    assert engine.drain_once() is not None
    assert engine.journal_depth() > 0
    assert builder.merges == [(0, 0)]  # the fifth segment started one
    counts = []
    while engine.journal_depth() > 0:
        assert engine.drain_once() is not None
        counts.append(len(engine.index.segments))
    assert max(counts) <= 5
    assert len(builder.merges) > 1  # and went on merging
    engine.drain_all()
    _assert_found(engine, indexer, traces, 30)


def test_the_merge_backlog_bound_is_at_least_the_fanout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"at least the index fanout \(2\), got 1"):
        _engine(tmp_path, merge_backlog_segments=1)
    # The default is four groups (4 x fanout): merges wait up to 8 segments here.
    engine = _engine(tmp_path, max_epoch_entries=1)
    _ingest(engine, 9)
    for _ in range(8):
        assert engine.drain_once() is not None
    assert sorted(s.level for s in engine.index.segments) == [0] * 6 + [1]


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    yield
    for child in multiprocessing.active_children():
        child.join(timeout=5)


def test_a_node_stopped_with_a_backlog_ends_its_epochs_before_its_builder(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # As the enclave process exits its builder is closed; an epoch still running then
    # failed to hand work to it and logged "epoch failed" (seen at the end of every
    # `otrace bench ingest`). The epoch thread is now stopped first.
    settings = node_settings(tmp_path)
    requests = build_requests(20_000, 500, seed=3)
    with running(settings) as node:
        assert node.grpc is not None
        for body, _ in requests:
            grpc_export(node.grpc.port, body)
        assert node.stats()["journal_depth"] > 0  # stopped with epochs still to run
    assert "epoch failed" not in capfd.readouterr().err
    with running(settings) as node:  # and nothing acknowledged was lost
        assert len(spans_of(stored(node))) == 20_000
