"""Trapdoors and locators (`query._trapdoor`), pinned to the library primitives they are
defined by, and the properties the leakage profile relies on."""

from __future__ import annotations

import hashlib
import os
from collections import Counter

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from otrace.errors import InvalidRequest
from query._trapdoor import Locator, Trapdoors, locate, trapdoor_for

KEY = bytes(range(32))


def test_a_trapdoor_is_keyed_blake2b_of_the_keyword() -> None:
    expected = hashlib.blake2b(
        b"svc:checkout", key=KEY, person=b"otrace/query/kw", digest_size=32
    ).digest()
    assert trapdoor_for(KEY, "svc:checkout") == Trapdoors(KEY)("svc:checkout") == expected
    assert trapdoor_for(bytes(32), "svc:checkout") != expected


def test_a_keyword_that_is_not_unicode_text_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="not valid UTF-8"):
        trapdoor_for(KEY, "bad \udcff")


def test_a_locator_is_aes_under_the_segments_key_of_the_trapdoors_first_block() -> None:
    door = trapdoor_for(KEY, "trace:0123")
    segment_key = hashlib.blake2b(
        (77).to_bytes(8, "big"), key=KEY, person=b"otrace/query/sg", digest_size=32
    ).digest()
    block = Cipher(algorithms.AES(segment_key), modes.ECB()).encryptor().update(door[:16])
    expected = int.from_bytes(block[:8], "little") % 1024
    assert locate(KEY, door, 77, 1024) == expected
    # Many at once give each its own (the batch is independent single-block evaluations).
    doors = [os.urandom(32) for _ in range(50)] + [door]
    assert Locator(KEY)(77, 1024, doors)[-1] == expected
    assert Locator(KEY)(77, 1024, doors) == [locate(KEY, d, 77, 1024) for d in doors]


def test_locators_are_uniform_and_unrelated_across_segments_and_keys() -> None:
    doors = [trapdoor_for(KEY, f"attr:request.id={i}") for i in range(4096)]
    locator = Locator(KEY)
    first, second = locator(1, 64, doors), locator(2, 64, doors)
    # Each of 64 buckets gets ~64 keywords (a chi-square test at 63 degrees of freedom;
    # 110 is beyond p = 0.0002).
    for buckets in (first, second):
        counts = Counter(buckets)
        assert sum((counts[b] - 64) ** 2 / 64 for b in range(64)) < 110
    # The same keyword in another segment (or under another key) lands independently:
    # about 1/64 of them in the same bucket, not all.
    same = sum(a == b for a, b in zip(first, second, strict=True))
    assert same < 4096 // 64 * 2
    other = Locator(bytes(32))(1, 64, doors)
    assert sum(a == b for a, b in zip(first, other, strict=True)) < 4096 // 64 * 2
    assert locator(3, 64, []) == []
