"""Search leakage, seen from the storage: every statement the database receives is captured
(a SQLAlchemy `before_cursor_execute` hook on the store's engine, which carries the
journal, the ORAM and the EDB) while spans are ingested and searched.

Claims checked (SECURITY.md, "Leakage"): no plaintext service name, attribute
value, span name or trace id reaches storage; a query always reads its budget of
ORAM paths, whatever matches; the same query twice reads unrelated ORAM paths
(only its EDB slots repeat); leaves are uniform; rows written after a search
sit at slots that search never looked up (forward privacy).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from scipy.stats import chisquare

from collector._ingest import IngestEngine
from collector._journal import Journal
from oram_store import OramParams, PathOram, SqlBucketStore
from otrace.errors import IntegrityError
from query import (
    EdbCodec,
    Indexer,
    QueryBudget,
    QueryExecutor,
    SearchRequest,
    service_keyword,
    trace_keyword,
    trapdoor_for,
)
from tee import Sealer
from tests.query.conftest import trace_request

INDEX_KEY = b"\x05" * 32
SECRET_SERVICE = "payroll-secret-svc"
SECRET_VALUE = "iban-DE89370400440532013000"
BUDGET = QueryBudget(trace_width=4, trace_batches=2, search_width=4, search_batches=4)


@dataclass
class Observed:
    statements: list[tuple[str, list[Any]]] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.statements)

    def since(self, mark: int) -> list[tuple[str, list[Any]]]:
        return self.statements[mark:]


def _flatten(params: Any) -> list[Any]:
    if isinstance(params, dict):
        return [v for x in params.values() for v in _flatten(x)]
    if isinstance(params, list | tuple):
        return [v for x in params for v in _flatten(x)]
    wrapped = getattr(params, "obj", None)  # psycopg wraps bytes parameters in Binary
    return [bytes(wrapped) if isinstance(wrapped, bytes | memoryview) else params]


@dataclass
class Harness:
    store: SqlBucketStore
    engine: IngestEngine
    executor: QueryExecutor
    seen: Observed
    height: int

    def oram_batches(self, mark: int) -> list[set[int]]:
        """Leaf buckets of every ORAM bucket read since `mark`, one set per batch."""
        leaf = 1 << self.height
        return [
            {p for p in params if isinstance(p, int) and p >= leaf}
            for sql, params in self.seen.since(mark)
            if sql.lstrip().upper().startswith("SELECT") and "oram_spans" in sql
        ]

    def edb_slots(self, mark: int, verb: str = "SELECT") -> set[int]:
        """EDB slots (segment << 32 | bucket) named by `verb` statements since `mark`."""
        return {
            p
            for sql, params in self.seen.since(mark)
            if sql.lstrip().upper().startswith(verb) and "edb_spans" in sql
            for p in params
            if isinstance(p, int) and p >= 1 << 32
        }

    def ingest(self, *requests: Any) -> None:
        self.engine.ingest([("application/x-protobuf", r.SerializeToString()) for r in requests])
        self.engine.drain_all()


@pytest.fixture
def harness(store_url: str) -> Iterator[Harness]:
    store = SqlBucketStore(store_url)
    seen = Observed()

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        seen.statements.append((statement, _flatten(params)))

    sealer = Sealer.from_key(b"\x01" * 32)
    oram = PathOram.create(
        store,
        OramParams("spans", blocks=2048, block_size=4096, batch_size=8),
        key=b"\x02" * 32,
        sealer=sealer,
        cache_levels=2,
    )
    journal = Journal(store.engine, b"\x03" * 32)
    indexer = Indexer(INDEX_KEY, EdbCodec(b"\x04" * 32))
    engine = IngestEngine(oram, journal, sealer, indexer=indexer)

    def lookup(labels: Any) -> Any:
        with store.engine.connect() as conn:
            return engine.edb.lookup(conn, labels)

    executor = QueryExecutor(engine, lookup, indexer, budget=BUDGET)
    try:
        yield Harness(store, engine, executor, seen, oram.params.height)
    finally:
        journal.close()
        store.close()


def _secret_trace(now: int) -> tuple[bytes, Any]:
    tid, req = trace_request(SECRET_SERVICE, now, 40)
    for span in req.resource_spans[0].scope_spans[0].spans:
        span.attributes.add(key="account").value.string_value = SECRET_VALUE
    return tid, req


def _stored_secret_trace(harness: Harness) -> bytes:
    """Ingests the secret trace; returns its trace trapdoor."""
    tid, req = _secret_trace(time.time_ns())
    harness.ingest(req)
    return trapdoor_for(INDEX_KEY, trace_keyword(tid))


def _looked_up_bucket(harness: Harness) -> tuple[bytes, int]:
    """Ingests the secret trace and looks it up once: its trapdoor and the one EDB slot read."""
    door = _stored_secret_trace(harness)
    mark = harness.seen.mark()
    assert len(harness.executor.get_trace(door).records) == 3
    (slot,) = harness.edb_slots(mark)
    return door, slot


def _search(service: str, now: int) -> SearchRequest:
    return SearchRequest(
        terms=(trapdoor_for(INDEX_KEY, service_keyword(service)),),
        start_ns=now - 3600 * 10**9,
        end_ns=now + 10**9,
    )


def test_no_plaintext_reaches_storage_during_ingest_or_search(harness: Harness) -> None:
    now = time.time_ns()
    tid, req = _secret_trace(now)
    harness.ingest(req, *(trace_request("noise", now, 5)[1] for _ in range(20)))
    got = harness.executor.get_trace(trapdoor_for(INDEX_KEY, trace_keyword(tid)))
    assert len(got.records) == 3
    assert {r.trace_id for r in harness.executor.search(_search(SECRET_SERVICE, now)).records} == {
        tid
    }
    markers = [
        SECRET_SERVICE.encode(),
        SECRET_VALUE.encode(),
        b"GET /cart",
        tid,
        tid.hex().encode(),
    ]
    assert len(harness.seen.statements) > 50
    for sql, params in harness.seen.statements:
        blobs = [sql.encode()] + [
            bytes(p) if isinstance(p, bytes | memoryview) else str(p).encode() for p in params
        ]
        assert not any(m in b for m in markers for b in blobs)


def test_every_query_reads_its_budget_whatever_it_matches(harness: Harness) -> None:
    now = time.time_ns()
    tids = []
    for i in range(12):
        tid, req = trace_request("shop" if i % 2 else "other", now - i * 10**9, 5)
        tids.append(tid)
        harness.ingest(req)
    queries = {
        "trace, found": lambda: harness.executor.get_trace(
            trapdoor_for(INDEX_KEY, trace_keyword(tids[0]))
        ),
        "trace, absent": lambda: harness.executor.get_trace(
            trapdoor_for(INDEX_KEY, trace_keyword(os.urandom(16)))
        ),
        "search, many": lambda: harness.executor.search(_search("shop", now)),
        "search, none": lambda: harness.executor.search(_search("nobody", now)),
    }
    for name, run in queries.items():
        mark = harness.seen.mark()
        result = run()
        batches = harness.oram_batches(mark)
        trace = name.startswith("trace")
        expected = BUDGET.trace_batches if trace else BUDGET.search_batches
        width = BUDGET.trace_width if trace else BUDGET.search_width
        assert len(batches) == expected, name
        assert result.reads == expected * width
        # Each batch reads `width` random paths (two may share a leaf, rarely).
        assert all(width - 1 <= len(leaves) <= width for leaves in batches), name


def test_the_same_query_twice_reads_unrelated_paths_and_repeats_only_its_slots(
    harness: Harness,
) -> None:
    door = _stored_secret_trace(harness)
    runs = []
    for _ in range(2):
        mark = harness.seen.mark()
        assert len(harness.executor.get_trace(door).records) == 3
        runs.append((set().union(*harness.oram_batches(mark)), harness.edb_slots(mark)))
    (paths_a, slots_a), (paths_b, slots_b) = runs
    # 8 random leaves of 1024 each: sharing more than one would be a 1-in-2000 event.
    assert len(paths_a & paths_b) <= 1
    # The documented search-pattern leakage: the EDB buckets of a repeated query repeat.
    assert slots_a == slots_b and slots_a


def test_leaves_read_by_queries_are_uniform(harness: Harness) -> None:
    door = _stored_secret_trace(harness)
    mark = harness.seen.mark()
    for _ in range(60):
        harness.executor.get_trace(door)  # the same block, again and again
    leaves = [leaf for batch in harness.oram_batches(mark) for leaf in batch]
    assert len(leaves) >= 470
    bins = 16
    base, span = 1 << harness.height, 1 << harness.height
    counts = [0] * bins
    for leaf in leaves:
        counts[(leaf - base) * bins // span] += 1
    assert chisquare(counts).pvalue > 0.001


def test_rows_written_after_a_search_sit_at_slots_it_never_looked_up(harness: Harness) -> None:
    now = time.time_ns()
    harness.ingest(trace_request("shop", now, 5)[1])
    looked_up: set[int] = set()
    for _ in range(3):
        mark = harness.seen.mark()
        harness.executor.search(_search("shop", now))
        looked_up |= harness.edb_slots(mark)
    mark = harness.seen.mark()
    harness.ingest(trace_request("shop", now, 5)[1])
    written = harness.edb_slots(mark, "INSERT")
    assert written and looked_up
    assert written.isdisjoint(looked_up)


def test_an_altered_index_row_is_an_integrity_error_never_a_wrong_answer(
    harness: Harness,
) -> None:
    door, slot = _looked_up_bucket(harness)
    table = harness.engine.edb.table
    with harness.store.engine.begin() as conn:
        value = conn.execute(sa.select(table.c.value).where(table.c.slot == slot)).scalar_one()
        flipped = bytes(value[:-1]) + bytes([value[-1] ^ 1])
        conn.execute(table.update().where(table.c.slot == slot).values(value=flipped))
    with pytest.raises(IntegrityError, match="index row failed authentication"):
        harness.executor.get_trace(door)


def test_a_deleted_index_bucket_is_an_integrity_error_never_a_silent_gap(
    harness: Harness,
) -> None:
    door, slot = _looked_up_bucket(harness)
    table = harness.engine.edb.table
    with harness.store.engine.begin() as conn:
        conn.execute(table.delete().where(table.c.slot == slot))
    with pytest.raises(IntegrityError, match="1 encrypted index bucket"):
        harness.executor.get_trace(door)


def test_a_restart_reads_one_index_bucket_fixed_by_the_oldest_segment(harness: Harness) -> None:
    # At start the engine opens one bucket to refuse an index of an earlier format. What
    # the storage sees must not depend on what is stored: bucket 0 of the oldest segment,
    # read only, nothing written.
    now = time.time_ns()
    _stored_secret_trace(harness)
    harness.ingest(trace_request("shop", now, 5)[1])
    oldest = harness.engine.index.segments[0]
    mark = harness.seen.mark()
    again = IngestEngine(
        harness.engine.device,
        harness.engine.journal,
        Sealer.from_key(b"\x01" * 32),
        indexer=harness.engine.indexer,
    )
    assert again.index == harness.engine.index
    assert harness.edb_slots(mark) == {oldest.id << 32}
    verbs = [
        sql.split()[0].upper()
        for sql, _ in harness.seen.since(mark)
        if "edb_spans" in sql and not sql.lstrip().upper().startswith("PRAGMA")  # schema check
    ]
    assert verbs == ["SELECT"]
