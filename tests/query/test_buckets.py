"""`query._buckets` (C: bucket bodies and the compaction merge) against `BlockSet`, the
Python reference for posting lists, and `Locator`, the reference for bucket placement."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query._buckets import bucket_entries, keyword_postings, merge_postings, pack_buckets
from query._edb import MIN_VALUE
from query._postings import BlockSet
from query._trapdoor import Locator

DOORS = [bytes([i]) * 32 for i in range(12)]  # a small pool: segments share keywords
segment = st.dictionaries(
    st.sampled_from(DOORS), st.sets(st.integers(0, 5000), max_size=60), max_size=8
)


def body(entries: list[tuple[bytes, bytes]]) -> bytes:
    return pack_buckets(entries, bytes(16 * len(entries)), 1, MIN_VALUE)[0]


def encoded(postings: dict[bytes, set[int]]) -> list[tuple[bytes, bytes]]:
    return [(door, BlockSet.of(blocks).encode()) for door, blocks in postings.items()]


@settings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(segment, st.integers(0, 100_000)), min_size=1, max_size=6))
def test_a_merge_unites_each_keywords_shifted_postings_as_blockset_would(
    segments: list[tuple[dict[bytes, set[int]], int]],
) -> None:
    merged = merge_postings([body(encoded(p)) for p, _ in segments], [s for _, s in segments])
    expected: dict[bytes, list[BlockSet]] = {}
    for postings, shift in segments:
        for door, blocks in postings.items():
            expected.setdefault(door, []).append(BlockSet.of(blocks).shifted(shift))
    assert [door for door, _ in merged] == list(expected)  # each once, first-seen order
    for door, raw in merged:
        union = BlockSet.union(expected[door])
        assert raw == union.encode()  # byte for byte: the smaller encoding, as ingest picks
        assert BlockSet.decode(raw).blocks() == union.blocks()


@pytest.mark.parametrize(
    "blocks",
    [[], [0], [5], [3, 900], list(range(40, 80, 3)), [200, 201, 202, 210], [127, 128, 16383]],
)
@pytest.mark.parametrize("shift", [0, 1, 127, 128, 70_000, 2**33])
def test_a_keyword_of_one_segment_is_moved_in_either_encoding(
    blocks: list[int], shift: int
) -> None:
    raw = BlockSet.of(blocks).encode()
    [(door, moved)] = merge_postings([body([(DOORS[0], raw)])], [shift])
    assert door == DOORS[0]
    assert moved == BlockSet.decode(raw).shifted(shift).encode()
    assert BlockSet.decode(moved).blocks() == [b + shift for b in blocks]


@pytest.mark.parametrize(
    ("raw", "shift", "error"),
    [
        (b"\x07\x01", 3, "unknown posting layout"),
        (b"", 3, "empty posting list"),
        (b"\x01", 3, "truncated posting list"),
        (b"\x00\x80", 3, "truncated posting list"),
    ],
)
def test_a_merge_refuses_postings_it_did_not_write(raw: bytes, shift: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        merge_postings([body([(DOORS[0], raw)])], [shift])
    # In several segments the lists are decoded rather than moved: refused too.
    with pytest.raises(ValueError, match=error):
        other = body([(DOORS[0], BlockSet.of([1]).encode())])
        merge_postings([other, body([(DOORS[0], raw)])], [0, shift])


def test_a_body_whose_entries_overrun_it_is_refused() -> None:
    whole = body([(DOORS[0], b"\x00\x05"), (DOORS[1], b"\x00\x06")])
    used = 4 + 2 * (32 + 4 + 2)
    for cut in (3, 4 + 20, used - 1):
        with pytest.raises(ValueError, match="unknown layout"):
            bucket_entries(whole[:cut])
        with pytest.raises(ValueError, match="unknown layout"):
            merge_postings([whole[:cut]], [0])
    assert bucket_entries(whole[:used]) == [(DOORS[0], b"\x00\x05"), (DOORS[1], b"\x00\x06")]


def test_merge_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="one shift a body"):
        merge_postings([body([])], [])
    with pytest.raises(ValueError, match="negative"):
        merge_postings([body([])], [-1])
    assert merge_postings([], []) == []


@settings(deadline=None, max_examples=50)
@given(st.integers(0, 300), st.sampled_from([1, 2, 8, 64]), st.integers(0, 2**40))
def test_packing_puts_each_keyword_in_its_located_bucket(
    keywords: int, count: int, seg_id: int
) -> None:
    doors = [i.to_bytes(4, "big") * 8 for i in range(keywords)]
    entries = [(door, BlockSet.of([i, 2 * i + 1]).encode()) for i, door in enumerate(doors)]
    locate = Locator(b"k" * 32)
    bodies = pack_buckets(entries, locate.blocks(seg_id, doors), count, MIN_VALUE)
    assert len(bodies) == count
    where = locate(seg_id, count, doors)
    for b, packed in enumerate(bodies):
        size = len(packed)
        assert size >= MIN_VALUE and size & (size - 1) == 0  # a power-of-two size class
        assert bucket_entries(packed) == [
            e for e, at in zip(entries, where, strict=True) if at == b
        ]


def test_packing_arguments_are_checked() -> None:
    entry = [(DOORS[0], b"\x00\x01")]
    with pytest.raises(ValueError, match="power of two"):
        pack_buckets(entry, bytes(16), 3, MIN_VALUE)
    with pytest.raises(ValueError, match="16 locator bytes"):
        pack_buckets(entry, bytes(8), 1, MIN_VALUE)
    with pytest.raises(ValueError, match="smallest size"):
        pack_buckets(entry, bytes(16), 1, 100)
    with pytest.raises(TypeError, match="32-byte trapdoor"):
        pack_buckets([(b"short", b"\x00")], bytes(16), 1, MIN_VALUE)


WORDS = st.sampled_from([f"svc:{i}" for i in range(6)] + ["trace:é", "name:x", ""])


@settings(deadline=None, max_examples=300)
@given(st.lists(st.lists(st.lists(WORDS, max_size=5), max_size=4), max_size=40))
def test_an_epochs_keywords_are_inverted_into_the_postings_blockset_would_encode(
    blocks: list[list[list[str]]],
) -> None:
    expected: dict[str, list[int]] = {}
    for i, records in enumerate(blocks):
        for words in records:
            for word in words:
                seen = expected.setdefault(word, [])
                if not seen or seen[-1] != i:
                    seen.append(i)
    got = keyword_postings([[tuple(w) for w in records] for records in blocks])
    assert [word for word, _ in got] == list(expected)  # each once, first-seen order
    for word, raw in got:
        assert raw == BlockSet.of(expected[word]).encode()  # byte for byte


def test_keyword_postings_refuses_what_is_not_keywords() -> None:
    with pytest.raises(TypeError, match="keywords must be str"):
        keyword_postings([[("a", b"b")]])
    with pytest.raises(TypeError, match="a record's keywords must be a sequence"):
        keyword_postings([[5]])
    with pytest.raises(TypeError, match="blocks must be a sequence"):
        keyword_postings(5)  # type: ignore[arg-type]
    assert keyword_postings([]) == [] and keyword_postings([[], [()]]) == []
