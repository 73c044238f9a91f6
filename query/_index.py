"""The index's enclave-side state and how it changes: epochs add segments, compaction merges
them, retention drops them.

A **segment** is the unit of the EDB: its keywords' postings are packed into a
power-of-two number of buckets, each keyword in the bucket its locator
(`Locator` of trapdoor, segment id and bucket count) names. Each epoch adds a level-0
segment; when `fanout` segments share a level (and together span no more
than `max_span_ns` of span start times) they are merged into one segment of
the next level under a fresh id, so old labels die with their rows and the
number of segments a query visits stays logarithmic. Segments whose spans are
all older than the retention, or whose blocks the ring has overwritten, are
dropped. Postings count blocks from their segment's first block (EDB v5), so
an epoch's rows are built before the epoch's place in the ring is known.

`IndexState` (segment directory, next segment id, the service/operation
catalogue) is sealed in storage beside the ingest state, which binds it by
generation and digest to the ORAM commit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import cbor2

from otrace.errors import IntegrityError
from query._buckets import keyword_postings, merge_postings
from query._edb import EdbCodec, EdbRow, RawEntry, bucket_count
from query._trapdoor import Locator, Trapdoors

__all__ = ["IndexState", "Indexer", "MaintenancePlan", "Segment", "decode_index", "encode_index"]

MAX_SERVICES = 1000
MAX_OPERATIONS = 1000  # per service
_LENGTH = struct.Struct("<I")
_MIN_SEALED = 4096


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    level: int
    t_min: int  # earliest span start (ns)
    t_max: int  # latest span start (ns)
    first_block: int  # absolute block numbers [first_block, last_block)
    last_block: int
    spans: int
    rows: int  # EDB rows (buckets, a power of two)

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        return self.t_max >= start_ns and self.t_min <= end_ns

    def within(self, start_ns: int, end_ns: int) -> bool:
        return start_ns <= self.t_min and self.t_max <= end_ns

    def moved(self, offset: int) -> Segment:
        """This segment with its blocks `offset` further on (its rows are unchanged:
        postings count from the first block)."""
        return replace(
            self, first_block=self.first_block + offset, last_block=self.last_block + offset
        )


@dataclass(frozen=True, slots=True)
class IndexState:
    segments: tuple[Segment, ...] = ()
    next_segment: int = 1
    catalogue: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EpochSpans:
    """What one epoch adds to the index: its blocks' keywords, and span facts."""

    first_block: int
    block_count: int
    # Every keyword once, with the encoded set of its blocks counted from `first_block`.
    postings: Sequence[tuple[str, bytes]]
    t_min: int
    t_max: int
    spans: int
    operations: Iterable[tuple[str, str]]  # (service, span name)

    @classmethod
    def of(
        cls,
        first_block: int,
        keywords: Sequence[Sequence[Sequence[str]]],
        *,
        t_min: int,
        t_max: int,
        spans: int,
        operations: Iterable[tuple[str, str]],
    ) -> EpochSpans:
        """From the keywords of each record (`keywords[i][j]`: record j of block
        `first_block + i`); inverted in C, ~12 keywords a span being the builder's
        largest loop in Python."""
        postings = keyword_postings(keywords)
        return cls(first_block, len(keywords), postings, t_min, t_max, spans, operations)


@dataclass(frozen=True, slots=True)
class MaintenancePlan:
    retire: tuple[Segment, ...] = ()
    merge: tuple[Segment, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.retire or self.merge)


class Indexer:
    """Builds segment rows with the enclave's keys; pure apart from the codec's nonces."""

    def __init__(
        self,
        index_key: bytes,
        codec: EdbCodec,
        *,
        fanout: int = 8,
        retention_ns: int = 7 * 86400 * 10**9,
    ) -> None:
        self._trapdoor_for = Trapdoors(index_key)
        self.locate = Locator(index_key)
        self.codec = codec
        self.fanout = fanout
        self.retention_ns = retention_ns
        self.max_span_ns = max(60 * 10**9, retention_ns // 8)
        self._trapdoors: dict[str, bytes] = {}
        self._keywords: dict[bytes, str] = {}  # the cache reversed

    def __repr__(self) -> str:
        return f"Indexer(fanout={self.fanout}, retention_ns={self.retention_ns})"

    def trapdoor(self, keyword: str) -> bytes:
        found = self._trapdoors.get(keyword)
        if found is None:
            if len(self._trapdoors) > 200_000:
                self._trapdoors.clear()
                self._keywords.clear()
            found = self._trapdoors[keyword] = self._trapdoor_for(keyword)
            self._keywords[found] = keyword
        return found

    def keyword_of(self, trapdoor: bytes) -> str | None:
        """The keyword of a trapdoor this enclave computed recently (its own cache)."""
        return self._keywords.get(trapdoor)

    # ------------------------------------------------------------------ epochs

    def add_epoch(self, state: IndexState, epoch: EpochSpans) -> tuple[IndexState, list[EdbRow]]:
        """The new state and the EDB rows of the epoch's level-0 segment."""
        segment, rows = self.epoch_segment(state.next_segment, epoch)
        return self.with_segment(state, segment, epoch.operations), rows

    def epoch_segment(self, seg_id: int, epoch: EpochSpans) -> tuple[Segment, list[EdbRow]]:
        """Level-0 segment `seg_id` of an epoch and its rows. Needs no index state, so the
        epoch builder runs it while the previous epoch is still being written; and its rows
        do not depend on where the epoch's blocks start (postings count from the segment's
        first block), so epochs are built side by side before their place is known."""
        # Not through the cache: an epoch computes each keyword's trapdoor once, and most
        # keywords (ids) are never seen again.
        trapdoor = self._trapdoor_for
        rows = self._rows(seg_id, [(trapdoor(word), raw) for word, raw in epoch.postings])
        first = epoch.first_block
        segment = Segment(
            seg_id,
            0,
            epoch.t_min,
            epoch.t_max,
            first,
            first + epoch.block_count,
            epoch.spans,
            len(rows),
        )
        return segment, rows

    def with_segment(
        self, state: IndexState, segment: Segment, operations: Iterable[tuple[str, str]]
    ) -> IndexState:
        """`state` with an epoch's segment and its (service, span name) pairs added."""
        return IndexState(
            (*state.segments, segment),
            max(state.next_segment, segment.id + 1),
            _catalogued(state.catalogue, operations),
        )

    def _rows(self, seg_id: int, entries: list[RawEntry]) -> list[EdbRow]:
        """A segment's buckets from (trapdoor, encoded postings), one per keyword."""
        located = self.locate.blocks(seg_id, [door for door, _ in entries])
        return self.codec.segment_rows(seg_id, entries, located, bucket_count(len(entries)))

    # ------------------------------------------------------------- maintenance

    def plan(self, state: IndexState, now_ns: int, live_from: int) -> MaintenancePlan:
        """Segments to drop (expired, or every block overwritten) and, if due, one merge."""
        horizon = now_ns - self.retention_ns
        retire = tuple(s for s in state.segments if s.t_max < horizon or s.last_block <= live_from)
        kept = [s for s in state.segments if s not in retire]
        for level in sorted({s.level for s in kept}):
            group = [s for s in kept if s.level == level][: self.fanout]
            span = max(s.t_max for s in group) - min(s.t_min for s in group)
            if len(group) == self.fanout and span <= self.max_span_ns:
                return MaintenancePlan(retire, tuple(group))
        return MaintenancePlan(retire)

    def apply(
        self, state: IndexState, plan: MaintenancePlan, merged_rows: Sequence[EdbRow]
    ) -> tuple[IndexState, list[EdbRow]]:
        """The state after `plan`, and the merged segment's rows (from the old segments' rows)."""
        if not plan.merge:
            return self.with_plan(state, plan, None), []
        merged, rows = self.merged_segment(state.next_segment, plan.merge, merged_rows)
        return self.with_plan(state, plan, merged), rows

    def merged_segment(
        self, seg_id: int, group: Sequence[Segment], merged_rows: Sequence[EdbRow]
    ) -> tuple[Segment, list[EdbRow]]:
        """Segment `seg_id` merging `group`, and its rows, from the group's rows (checked to
        be exactly theirs). Needs no index state: the epoch builder runs it."""
        expected = {s.id: s.rows for s in group}
        seen = dict.fromkeys(expected, 0)
        first = min(s.first_block for s in group)
        offset = {s.id: s.first_block - first for s in group}  # postings are relative
        bodies, shifts = [], []
        for row in merged_rows:
            if row.segment not in seen:
                raise IntegrityError(f"index row of segment {row.segment} returned for a merge")
            seen[row.segment] += 1
            bodies.append(self.codec.open_body(row))
            shifts.append(offset[row.segment])
        if seen != expected:
            raise IntegrityError(
                "rows are missing from or were added to the encrypted index "
                f"(segments {sorted(expected)}: expected {expected}, found {seen})"
            )
        try:
            entries = merge_postings(bodies, shifts)
        except ValueError as exc:
            raise IntegrityError(str(exc)) from None
        rows = self._rows(seg_id, entries)
        merged = Segment(
            seg_id,
            max(s.level for s in group) + 1,
            min(s.t_min for s in group),
            max(s.t_max for s in group),
            first,
            max(s.last_block for s in group),
            sum(s.spans for s in group),
            len(rows),
        )
        return merged, rows

    def with_plan(
        self, state: IndexState, plan: MaintenancePlan, merged: Segment | None
    ) -> IndexState:
        """`state` without the plan's retired and merged segments, with `merged` added."""
        dropped = {s.id for s in (*plan.retire, *plan.merge)}
        segments = [s for s in state.segments if s.id not in dropped]
        if merged is None:
            return replace(state, segments=tuple(segments))
        segments.append(merged)
        segments.sort(key=lambda s: s.first_block)
        return replace(
            state,
            segments=tuple(segments),
            next_segment=max(state.next_segment, merged.id + 1),
        )


def _catalogued(
    catalogue: Mapping[str, frozenset[str]], operations: Iterable[tuple[str, str]]
) -> Mapping[str, frozenset[str]]:
    added: dict[str, set[str]] = {}
    for service, name in operations:
        known = catalogue.get(service, frozenset())
        if name in known:
            continue
        if service not in catalogue and len(catalogue) + len(added) >= MAX_SERVICES:
            continue
        adding = added.setdefault(service, set())
        if len(known) + len(adding) < MAX_OPERATIONS:
            adding.add(name)
    if not added:
        return catalogue
    out = dict(catalogue)
    for service, names in added.items():
        out[service] = out.get(service, frozenset()) | names
    return out


def encode_index(state: IndexState) -> bytes:
    """Canonical CBOR, length-prefixed and zero-padded to a power of two (>= 4 KiB)."""
    body = cbor2.dumps(
        [
            [
                [s.id, s.level, s.t_min, s.t_max, s.first_block, s.last_block, s.spans, s.rows]
                for s in state.segments
            ],
            state.next_segment,
            {svc: sorted(ops) for svc, ops in state.catalogue.items()},
        ],
        canonical=True,
    )
    raw = _LENGTH.pack(len(body)) + body
    size = max(_MIN_SEALED, 1 << (len(raw) - 1).bit_length())
    return raw + bytes(size - len(raw))


def decode_index(raw: bytes) -> IndexState:
    try:
        (length,) = _LENGTH.unpack_from(raw)
        segments, next_segment, catalogue = cbor2.loads(raw[4 : 4 + length])
        return IndexState(
            tuple(Segment(*(int(x) for x in s)) for s in segments),
            int(next_segment),
            {str(k): frozenset(str(o) for o in v) for k, v in catalogue.items()},
        )
    except (struct.error, ValueError, TypeError, cbor2.CBORDecodeError):
        raise IntegrityError("the sealed index state has an unknown layout") from None
