"""Posting lists: both encodings round-trip, the smaller one is chosen, and the set
algebra the executor and compaction use agrees with Python sets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otrace.errors import IntegrityError
from query._postings import BlockSet

blocks = st.sets(st.integers(0, 2**20), max_size=300)


@settings(deadline=None)  # masks of up to 2^20 bits
@given(blocks)
def test_encodings_round_trip(numbers: set[int]) -> None:
    s = BlockSet.of(numbers)
    assert BlockSet.decode(s.encode()).blocks() == sorted(numbers)
    assert len(s) == len(numbers)


def test_dense_lists_are_bitmaps_and_sparse_lists_are_varints() -> None:
    dense = BlockSet.of(range(1000, 5000, 2))  # every other block: 2 bits per block
    sparse = BlockSet.of([5, 900_000, 1_800_000])
    assert dense.encode()[0] == 1 and len(dense.encode()) < 600
    assert sparse.encode()[0] == 0 and len(sparse.encode()) < 12


@settings(deadline=None)
@given(blocks, blocks, st.integers(0, 2**20))
def test_set_algebra_matches_python_sets(a: set[int], b: set[int], lowest: int) -> None:
    x, y = BlockSet.of(a), BlockSet.of(b)
    assert (x | y).blocks() == sorted(a | b)
    assert (x & y).blocks() == sorted(a & b)
    assert BlockSet.union([x, y, BlockSet()]).blocks() == sorted(a | b)
    assert x.at_least(lowest).blocks() == sorted(n for n in a if n >= lowest)
    assert x.newest(7) == sorted(a, reverse=True)[:7]
    assert all(n in x for n in a) and (lowest in x) == (lowest in a)


def test_span_is_every_block_in_the_range() -> None:
    assert BlockSet.span(10, 14).blocks() == [10, 11, 12, 13]
    assert not BlockSet.span(5, 5)


@pytest.mark.parametrize("raw", [b"", b"\x02\x01", b"\x00\x80", b"\x01\x80"])
def test_unknown_or_truncated_lists_are_integrity_errors(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        BlockSet.decode(raw)
