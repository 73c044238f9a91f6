"""The EDB as storage sees it: power-of-two bucket counts, size classes, authenticated rows."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from otrace.errors import IntegrityError
from query import EdbCodec, EdbRow, Postings, bucket_count
from query._postings import BlockSet

CODEC = EdbCodec(b"\x07" * 32)


@given(
    entries=st.lists(st.sets(st.integers(0, 2**16), max_size=200), max_size=40),
    segment=st.integers(0, 2**30),
    bucket=st.integers(0, 2**31),
)
def test_buckets_round_trip(entries: list[set[int]], segment: int, bucket: int) -> None:
    items = [Postings(os.urandom(32), tuple(sorted(blocks))) for blocks in entries]
    row = CODEC.seal(segment, bucket, items)
    assert CODEC.open(row) == items


def test_values_come_in_power_of_two_size_classes() -> None:
    def size(n: int) -> int:
        items = [Postings(os.urandom(32), (i,)) for i in range(n)]
        return len(CODEC.seal(1, 0, items).value) - 12 - 16  # nonce, tag

    assert {size(n) for n in range(0, 6)} == {256}
    assert all(s & (s - 1) == 0 for s in (size(30), size(200)))


@pytest.mark.parametrize(("keywords", "buckets"), [(0, 1), (1, 1), (32, 1), (33, 2), (1000, 32)])
def test_bucket_counts_are_powers_of_two_of_about_32_keywords(keywords: int, buckets: int) -> None:
    assert bucket_count(keywords) == buckets


def test_every_bucket_of_a_segment_is_written_even_when_empty() -> None:
    locator = (3).to_bytes(8, "little") + bytes(8)  # bucket 3 of 4
    rows = CODEC.segment_rows(5, [(b"t" * 32, BlockSet.of([1]).encode())], locator, 4)
    assert [r.bucket for r in rows] == [0, 1, 2, 3]
    assert len({len(r.value) for r in rows}) == 1
    assert [len(CODEC.open(r)) for r in rows] == [0, 0, 0, 1]


def test_an_altered_or_moved_row_fails_authentication() -> None:
    row = CODEC.seal(3, 1, [Postings(b"T" * 32, (1, 2, 3))])
    flipped = bytearray(row.value)
    flipped[20] ^= 1
    for bad in (
        replace(row, value=bytes(flipped)),
        replace(row, bucket=2),  # moved to another bucket
        replace(row, segment=4),  # moved to another segment
        replace(row, value=row.value[:40]),  # truncated
    ):
        with pytest.raises(IntegrityError, match="index row"):
            CODEC.open(bad)


def test_find_decodes_only_the_asked_trapdoors() -> None:
    row = CODEC.seal(1, 0, [Postings(b"a" * 32, (1, 5)), Postings(b"b" * 32, (7,))])
    assert CODEC.find(row, {b"b" * 32, b"c" * 32}) == {b"b" * 32: BlockSet.of([7])}


@pytest.mark.parametrize("version", ["v2", "v3", "v4"])
def test_a_row_of_an_earlier_index_format_says_so(version: str) -> None:
    """v2 rows (before posting lists carried their encoding), v3 rows (buckets located by
    keyed BLAKE2b: a later lookup would find the wrong bucket) and v4 rows (absolute block
    numbers: read as relative they would point at the wrong blocks) are refused by name."""
    nonce = b"\x05" * 12
    body = bytes(256)
    ad = f"otrace/edb/{version}\x00".encode() + (3).to_bytes(8, "big") + (1).to_bytes(4, "big")
    value = nonce + AESGCM(b"\x07" * 32).encrypt(nonce, body, ad)
    with pytest.raises(IntegrityError, match=f"earlier otrace \\(index format {version}\\)"):
        CODEC.open_raw(EdbRow(3, 1, value))
