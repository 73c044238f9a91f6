"""The EDB as storage sees it: fixed size classes, padded row counts, authenticated rows."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otrace.errors import IntegrityError
from query import EdbCodec, padded_row_count

CODEC = EdbCodec(b"\x07" * 32)


@given(
    keyword=st.text(max_size=300),
    blocks=st.sets(st.integers(0, 2**40), max_size=200),
    segment=st.integers(0, 2**62),
)
def test_postings_round_trip(keyword: str, blocks: set[int], segment: int) -> None:
    row = CODEC.seal(os.urandom(16), segment, keyword, blocks)
    opened = CODEC.open(row)
    assert opened.keyword == keyword
    assert opened.blocks == tuple(sorted(blocks))


def test_values_come_in_power_of_two_size_classes() -> None:
    sizes = {len(CODEC.seal(os.urandom(16), 1, "svc:a", range(n)).value) for n in range(0, 40)}
    # nonce (12) + tag (16) + a power of two of at least 64 bytes
    assert sizes == {12 + 16 + 64}
    big = len(CODEC.seal(os.urandom(16), 1, "svc:a", range(0, 10**6, 7)).value) - 28
    assert big & (big - 1) == 0


@pytest.mark.parametrize(("rows", "padded"), [(0, 0), (1, 1), (15, 15), (17, 18), (100, 104)])
def test_row_counts_are_padded_by_at_most_a_sixteenth(rows: int, padded: int) -> None:
    assert padded_row_count(rows) == padded


def test_a_segment_is_padded_with_dummies_indistinguishable_in_size() -> None:
    postings = {f"kw{i}": (os.urandom(16), [i]) for i in range(17)}
    rows = CODEC.segment_rows(5, postings)
    assert len(rows) == 18
    assert len({len(r.value) for r in rows}) == 1
    assert sum(CODEC.open(r).keyword == "" for r in rows) == 1


def test_an_altered_or_moved_row_fails_authentication() -> None:
    row = CODEC.seal(b"L" * 16, 3, "svc:checkout", [1, 2, 3])
    flipped = bytearray(row.value)
    flipped[20] ^= 1
    for bad in (
        replace(row, value=bytes(flipped)),
        replace(row, label=b"M" * 16),  # moved to another keyword's label
        replace(row, segment=4),  # moved to another segment
        replace(row, value=row.value[:40]),  # truncated
    ):
        with pytest.raises(IntegrityError, match="index row"):
            CODEC.open(bad)
