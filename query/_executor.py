"""The query executor, inside the enclave: trapdoors in, OTLP traces out, a fixed read budget.

Every query spends exactly its budget of block-device reads: `trace_batches`
batches of `width` paths for `get_trace`, `search_batches` for `search` (half
to find matching spans, half to fetch their whole traces), padded with dummy
paths whatever the number of matches. When the postings name more blocks than
the budget covers, the most recent are read and the answer is `truncated`.

Matching is exact: candidate blocks come from intersecting postings, then
each span read is checked by recomputing its keywords' trapdoors (equality
predicates) and comparing its start time and duration with the numeric bounds.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from otrace.errors import IntegrityError, InvalidRequest
from query._blocks import SpanRecord, traces_data, unpack_blocks
from query._edb import EdbRow, slot_of
from query._index import Indexer, IndexState, Segment
from query._keywords import (
    resource_keywords,
    service_keyword,
    span_keywords,
    span_predicate,
    trace_keyword,
)
from query._postings import EMPTY, BlockSet
from query._trapdoor import TRAPDOOR_SIZE

__all__ = ["BlockSource", "QueryBudget", "QueryExecutor", "QueryResult", "SearchRequest"]

MAX_LIMIT = 1000
MAX_TERMS = 64
MAX_COVER = 512


class BlockSource(Protocol):
    """What the executor needs of the ingest engine."""

    @property
    def lock(self) -> AbstractContextManager[object]: ...

    @property
    def index(self) -> IndexState: ...

    def live_from(self) -> int: ...

    def read_blocks(self, wanted: Sequence[int], batches: int, width: int) -> dict[int, bytes]: ...


class EdbReader(Protocol):
    def __call__(self, slots: Sequence[int]) -> list[EdbRow]: ...


@dataclass(frozen=True, slots=True)
class QueryBudget:
    """ORAM reads per query: `trace_batches` batches of `trace_width` paths for a trace
    lookup, `search_batches` (>= 2: half to find, half to fetch) of `search_width`."""

    trace_width: int = 16
    trace_batches: int = 1
    search_width: int = 32
    search_batches: int = 2

    def __post_init__(self) -> None:
        if min(self.trace_width, self.trace_batches, self.search_width) < 1:
            raise InvalidRequest("a query budget needs at least one path and one batch")
        if self.search_batches < 2:
            raise InvalidRequest("a search budget needs at least two batches")

    @classmethod
    def from_reads(cls, trace_reads: int, search_reads: int, widest: int) -> QueryBudget:
        """Equal batches no wider than `widest` (the ORAM's batch size)."""
        trace = max(1, -(-trace_reads // widest))
        search = max(2, -(-search_reads // widest))
        if trace_reads % trace or search_reads % search:
            raise InvalidRequest(
                f"query reads ({trace_reads}, {search_reads}) do not split into equal "
                f"batches of at most {widest}"
            )
        return cls(trace_reads // trace, trace, search_reads // search, search)

    @property
    def trace_reads(self) -> int:
        return self.trace_width * self.trace_batches

    @property
    def search_reads(self) -> int:
        return self.search_width * self.search_batches


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A conjunction: every term (trapdoor) on one span, its start and duration in range."""

    terms: tuple[bytes, ...] = ()
    time_cover: tuple[bytes, ...] = ()
    duration_cover: tuple[bytes, ...] = ()
    start_ns: int = 0
    end_ns: int = 2**63 - 1
    min_duration_ns: int = 0
    max_duration_ns: int = 2**63 - 1
    limit: int = 20

    def __post_init__(self) -> None:
        for td in (*self.terms, *self.time_cover, *self.duration_cover):
            if not isinstance(td, bytes) or len(td) != TRAPDOOR_SIZE:
                raise InvalidRequest(f"a trapdoor must be {TRAPDOOR_SIZE} bytes")
        if len(self.terms) > MAX_TERMS:
            raise InvalidRequest(f"at most {MAX_TERMS} search terms")
        if max(len(self.time_cover), len(self.duration_cover)) > MAX_COVER:
            raise InvalidRequest(f"a range cover may have at most {MAX_COVER} trapdoors")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}")


@dataclass(frozen=True, slots=True)
class QueryResult:
    records: list[SpanRecord] = field(repr=False)
    truncated: bool
    reads: int  # paths read for this query: always the budget

    def traces(self) -> bytes:
        return bytes(traces_data(self.records).SerializeToString())


class QueryExecutor:
    """Answers queries against the engine's index and blocks; see the module docstring."""

    def __init__(
        self,
        source: BlockSource,
        lookup: EdbReader,
        indexer: Indexer,
        *,
        budget: QueryBudget | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._source = source
        self._lookup = lookup
        self._indexer = indexer
        self.budget = budget or QueryBudget()
        self._clock = clock

    # ---------------------------------------------------------------- queries

    def get_trace(self, trapdoor: bytes, lookback_ns: int | None = None) -> QueryResult:
        if len(trapdoor) != TRAPDOOR_SIZE:
            raise InvalidRequest(f"a trapdoor must be {TRAPDOOR_SIZE} bytes")
        b = self.budget
        with self._source.lock:
            since = 0 if lookback_ns is None else self._clock() - lookback_ns
            segments = [s for s in self._source.index.segments if s.t_max >= since]
            wanted = BlockSet.union(self._postings(segments, [trapdoor]).values())
            data = self._source.read_blocks(
                wanted.newest(b.trace_reads), b.trace_batches, b.trace_width
            )
        records = [r for r in unpack_blocks(data.values()) if self._is_trace(r, trapdoor)]
        return QueryResult(records, len(wanted) > b.trace_reads, b.trace_reads)

    def search(self, request: SearchRequest) -> QueryResult:
        b = self.budget
        find, fetch = b.search_batches // 2, b.search_batches - b.search_batches // 2
        with self._source.lock:
            segments = [
                s
                for s in self._source.index.segments
                if s.overlaps(request.start_ns, request.end_ns)
            ]
            candidates = self._candidates(segments, request)
            data = self._source.read_blocks(
                candidates.newest(find * b.search_width), find, b.search_width
            )
            latest: dict[bytes, int] = {}  # matching trace -> its latest matching start
            resources: dict[bytes, frozenset[bytes]] = {}
            checks: dict[bytes, Callable[[Span], bool]] = {}
            for record in unpack_blocks(data.values()):
                start = self._match(record, request, resources, checks)
                if start is not None and start > latest.get(record.trace_id, -1):
                    latest[record.trace_id] = start
            chosen = sorted(latest, key=latest.__getitem__, reverse=True)[: request.limit]
            trace_doors = [self._indexer.trapdoor(trace_keyword(t)) for t in chosen]
            postings = self._postings(list(self._source.index.segments), trace_doors)
            traces = BlockSet.union(postings.values()).blocks()
            more = [x for x in reversed(traces) if x not in data]
            data.update(self._source.read_blocks(more, fetch, b.search_width))
        keep = set(chosen)
        records = [r for r in unpack_blocks(data.values()) if r.trace_id in keep]
        truncated = (
            len(candidates) > find * b.search_width and len(chosen) < request.limit
        ) or len(more) > fetch * b.search_width
        return QueryResult(records, truncated, b.search_reads)

    def services(self) -> list[str]:
        with self._source.lock:
            return sorted(self._source.index.catalogue)

    def operations(self, service_trapdoor: bytes) -> list[str]:
        with self._source.lock:
            catalogue = self._source.index.catalogue
            for service, names in catalogue.items():
                door = self._indexer.trapdoor(service_keyword(service))
                if hmac.compare_digest(door, service_trapdoor):
                    return sorted(names)
        return []

    # ---------------------------------------------------------------- helpers

    def _postings(
        self, segments: Sequence[Segment], trapdoors: Sequence[bytes]
    ) -> dict[tuple[int, bytes], BlockSet]:
        """(segment id, trapdoor) -> its blocks, for every pair the index holds."""
        wanted: dict[int, list[tuple[Segment, bytes]]] = {}
        for seg in segments:
            buckets = self._indexer.locate(seg.id, seg.rows, trapdoors)
            for td, bucket in zip(trapdoors, buckets, strict=True):
                wanted.setdefault(slot_of(seg.id, bucket), []).append((seg, td))
        out: dict[tuple[int, bytes], BlockSet] = {}
        rows = self._lookup(list(wanted))
        if len(rows) != len(wanted):
            # Every bucket of a live segment exists (empty ones too): a missing one was
            # deleted or moved, and answering without it would silently drop matches.
            missing = len(set(wanted) - {row.slot for row in rows})
            raise IntegrityError(f"{missing} encrypted index bucket(s) are missing from storage")
        for row in rows:
            # A row moved to another slot fails its AES-GCM associated data, one whose
            # segment column was changed fails `EdbTable` (slot and segment disagree).
            asked = wanted.get(row.slot, [])
            entries = self._indexer.codec.find(row, {td for _, td in asked})
            for seg, td in asked:
                if td in entries:  # postings count from the segment's first block
                    out[(seg.id, td)] = entries[td].shifted(seg.first_block)
        return out

    def _candidates(self, segments: Sequence[Segment], request: SearchRequest) -> BlockSet:
        """Blocks that may hold a match (live ones only)."""
        needs_time = [s for s in segments if not s.within(request.start_ns, request.end_ns)]
        doors = [*request.terms, *request.duration_cover]
        postings = self._postings(segments, doors)
        postings.update(self._postings(needs_time, request.time_cover))
        picked = EMPTY
        for seg in segments:
            found = BlockSet.span(seg.first_block, seg.last_block)
            for td in request.terms:
                found &= postings.get((seg.id, td), EMPTY)
            for cover, applies in (
                (request.duration_cover, True),
                (request.time_cover, seg in needs_time),
            ):
                if cover and applies:
                    found &= BlockSet.union(postings.get((seg.id, td), EMPTY) for td in cover)
            picked |= found
        return picked.at_least(self._source.live_from())

    def _is_trace(self, record: SpanRecord, trapdoor: bytes) -> bool:
        return hmac.compare_digest(self._indexer.trapdoor(trace_keyword(record.trace_id)), trapdoor)

    def _match(
        self,
        record: SpanRecord,
        request: SearchRequest,
        resources: dict[bytes, frozenset[bytes]],
        checks: dict[bytes, Callable[[Span], bool]],
    ) -> int | None:
        """The span's start time if it satisfies every predicate, else None. `resources`
        caches each resource's keyword trapdoors (a block's spans share a few resources):
        terms its resource satisfies need no per-span keywords."""
        rs = ResourceSpans.FromString(record.payload)
        span = rs.scope_spans[0].spans[0]
        start = span.start_time_unix_nano
        duration = span.end_time_unix_nano - start
        if not (request.start_ns <= start <= request.end_ns):
            return None
        if not (request.min_duration_ns <= duration <= request.max_duration_ns):
            return None
        if request.terms:
            key = rs.resource.SerializeToString()
            shared = resources.get(key)
            if shared is None:
                trapdoor = self._indexer.trapdoor
                shared = resources[key] = frozenset(
                    trapdoor(w) for w in resource_keywords(rs.resource)[1]
                )
            rest = [td for td in request.terms if td not in shared]
            if rest and not self._span_has(span, rest, checks):
                return None
        return start

    def _span_has(
        self, span: Span, doors: Sequence[bytes], checks: dict[bytes, Callable[[Span], bool]]
    ) -> bool:
        """Whether the span's own keywords include every trapdoor. A trapdoor whose keyword
        the enclave has computed before is checked directly (`checks` caches that per
        search); the others by computing the span's keywords, which teaches the enclave
        theirs."""
        unknown = []
        for td in doors:
            check = checks.get(td)
            if check is None:
                word = self._indexer.keyword_of(td)
                if word is None:
                    unknown.append(td)
                    continue
                check = checks[td] = span_predicate(word)
            if not check(span):
                return False
        if unknown:
            own = {self._indexer.trapdoor(w) for w in span_keywords((), span)}
            return all(td in own for td in unknown)
        return True
