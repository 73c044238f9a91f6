"""Index segments: epochs add them, compaction merges them, retention drops them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from otrace.errors import IntegrityError
from query import (
    EdbCodec,
    EpochSpans,
    Indexer,
    IndexState,
    Segment,
    decode_index,
    encode_index,
)
from query._buckets import pack_buckets
from query._edb import MIN_VALUE
from query._trapdoor import locate, trapdoor_for

KEY = b"\x01" * 32
NS = 10**9


def _indexer(**kw: int) -> Indexer:
    return Indexer(KEY, EdbCodec(b"\x02" * 32), **kw)


def _epoch(first_block: int, t: int, service: str = "a") -> EpochSpans:
    return EpochSpans.of(
        first_block,
        [[(f"svc:{service}", "name:x")], [("name:y",)]],
        t_min=t,
        t_max=t + 1,
        spans=3,
        operations={(service, "x"), (service, "y")},
    )


def _blocks_of(ix: Indexer, rows: list, keyword: str, segment: Segment) -> tuple[int, ...]:
    """Absolute block numbers (postings count from the segment's first block)."""
    door = trapdoor_for(KEY, keyword)
    (row,) = [r for r in rows if r.bucket == locate(KEY, door, segment.id, len(rows))]
    relative = next(e.blocks for e in ix.codec.open(row) if e.trapdoor == door)
    return tuple(segment.first_block + b for b in relative)


def test_an_epoch_adds_a_level_0_segment_under_a_new_id() -> None:
    ix = _indexer()
    state, rows = ix.add_epoch(IndexState(), _epoch(10, 100))
    (seg,) = state.segments
    assert (seg.id, seg.level, seg.first_block, seg.last_block, seg.spans) == (1, 0, 10, 12, 3)
    assert seg.rows == len(rows) == 1  # svc:a, name:x, name:y fit one bucket
    assert _blocks_of(ix, rows, "svc:a", seg) == (10,)
    assert _blocks_of(ix, rows, "name:y", seg) == (11,)
    assert state.catalogue == {"a": frozenset({"x", "y"})}
    again, rows2 = ix.add_epoch(state, _epoch(12, 200))
    assert {r.slot for r in rows}.isdisjoint({r.slot for r in rows2})
    assert again.next_segment == 3


@pytest.mark.parametrize("first", [0, 1000])
def test_fanout_segments_merge_into_one_under_a_new_id(first: int) -> None:
    ix = _indexer(fanout=4)
    state, all_rows = IndexState(), []
    for i in range(4):
        state, rows = ix.add_epoch(state, _epoch(first + 2 * i, 100 + i))
        all_rows += rows
    plan = ix.plan(state, now_ns=200, live_from=0)
    assert [s.id for s in plan.merge] == [1, 2, 3, 4] and not plan.retire
    merged_state, merged = ix.apply(state, plan, all_rows)
    (seg,) = merged_state.segments
    assert (seg.id, seg.level, seg.first_block, seg.last_block, seg.spans) == (
        5,
        1,
        first,
        first + 8,
        12,
    )
    # Each segment counted its postings from its own first block; merged, from the first.
    assert _blocks_of(ix, merged, "svc:a", seg) == tuple(first + b for b in (0, 2, 4, 6))
    assert _blocks_of(ix, merged, "name:y", seg) == tuple(first + b for b in (1, 3, 5, 7))
    assert not ix.plan(merged_state, now_ns=200, live_from=0)


def test_a_row_deleted_from_storage_is_caught_by_the_merge() -> None:
    ix = _indexer(fanout=2)
    state, rows = ix.add_epoch(IndexState(), _epoch(0, 1))
    state, more = ix.add_epoch(state, _epoch(2, 2))
    plan = ix.plan(state, now_ns=10, live_from=0)
    with pytest.raises(IntegrityError, match="missing from or were added"):
        ix.apply(state, plan, (rows + more)[1:])


def test_a_merge_refuses_rows_the_storage_altered_or_a_layout_it_cannot_read() -> None:
    ix = _indexer(fanout=2)
    state, rows = ix.add_epoch(IndexState(), _epoch(0, 1))
    state, more = ix.add_epoch(state, _epoch(2, 2))
    plan = ix.plan(state, now_ns=10, live_from=0)
    flipped = bytearray(more[0].value)
    flipped[-1] ^= 1  # what the storage can do: change a byte
    altered = [*rows, replace(more[0], value=bytes(flipped))]
    with pytest.raises(IntegrityError, match="failed authentication"):
        ix.apply(state, plan, altered)
    # A row that authenticates (sealed with the enclave's key) but holds a posting layout
    # this code never writes: IntegrityError from the C merge, not a ValueError.
    (door, _), *_ = ix.codec.open_raw(more[0])
    odd = pack_buckets([(door, b"\x07\x01")], bytes(16), 1, MIN_VALUE)[0]
    forged = [*rows, ix.codec.seal_body(more[0].segment, more[0].bucket, odd)]
    with pytest.raises(IntegrityError, match="unknown posting layout"):
        ix.apply(state, plan, forged)


def test_many_keywords_spread_over_power_of_two_buckets() -> None:
    ix = _indexer()
    words = {f"attr:request.id={i}" for i in range(1000)}
    epoch = EpochSpans.of(0, [[tuple(words)]], t_min=1, t_max=1, spans=1000, operations=())
    state, rows = ix.add_epoch(IndexState(), epoch)
    assert state.segments[0].rows == len(rows) == 32
    sizes = [len(ix.codec.open(r)) for r in rows]
    assert sum(sizes) == 1000 and max(sizes) < 64


def test_expired_and_overwritten_segments_are_retired() -> None:
    ix = _indexer(retention_ns=100 * NS)
    state, _ = ix.add_epoch(IndexState(), _epoch(0, 10 * NS))
    state, _ = ix.add_epoch(state, _epoch(2, 500 * NS))
    state, _ = ix.add_epoch(state, _epoch(4, 550 * NS))
    plan = ix.plan(state, now_ns=560 * NS, live_from=0)
    assert [s.id for s in plan.retire] == [1]
    plan = ix.plan(state, now_ns=560 * NS, live_from=4)  # the ring overwrote blocks 0..3
    assert [s.id for s in plan.retire] == [1, 2]
    after, rows = ix.apply(state, plan, [])
    assert [s.id for s in after.segments] == [3] and rows == []


def test_the_sealed_index_state_round_trips_in_a_padded_size() -> None:
    ix = _indexer()
    state, _ = ix.add_epoch(IndexState(), _epoch(0, 5))
    raw = encode_index(state)
    assert len(raw) == 4096
    assert decode_index(raw) == state
    with pytest.raises(IntegrityError, match="unknown layout"):
        decode_index(b"\xff" * 64)
