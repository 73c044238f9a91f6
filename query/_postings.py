"""Posting lists: the block numbers a keyword occurs in, as stored inside EDB buckets.

Each list is stored in the smaller of two encodings (the first byte says which):

    0x00 | delta varints of the ascending block numbers      sparse lists (ids)
    0x01 | base (varint) | bitmap, bit i set = block base+i   dense lists (services,
                                                             regions, time and
                                                             duration units)

Inside the enclave a list is a `BlockSet`: a base and a Python integer used as
a bit mask, so the unions and intersections a query does are single big-integer
operations (in C) rather than Python loops over block numbers. Measured on 1M
spans: decoding dense lists as varints was about a tenth of a search.
A compaction merge does not build `BlockSet`s: `query._buckets` (C) moves and
unites the encoded lists, and is tested against this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from otrace.errors import IntegrityError

__all__ = ["BlockSet"]

_LIST, _BITMAP = 0, 1
_ONES = re.compile("1")
# A bitmap is chosen when it is at most this many bits per listed block: at 16 it is
# no more than twice the size of the varints (one byte per small delta) and far
# faster to decode and combine.
_BITMAP_BITS_PER_BLOCK = 16


@dataclass(frozen=True, slots=True)
class BlockSet:
    """A set of absolute block numbers: bit i of `mask` is block `base + i`."""

    base: int = 0
    mask: int = 0

    # ------------------------------------------------------------ building

    @classmethod
    def of(cls, blocks: Iterable[int]) -> BlockSet:
        numbers = sorted(set(blocks))
        if not numbers:
            return EMPTY
        base = numbers[0]
        bits = bytearray((numbers[-1] - base) // 8 + 1)
        for b in numbers:
            i = b - base
            bits[i >> 3] |= 1 << (i & 7)
        return cls(base, int.from_bytes(bits, "little"))

    @classmethod
    def span(cls, first: int, stop: int) -> BlockSet:
        """Every block in [first, stop)."""
        return cls(first, (1 << (stop - first)) - 1) if stop > first else EMPTY

    # ------------------------------------------------------------ set algebra

    def __or__(self, other: BlockSet) -> BlockSet:
        if not other.mask:
            return self
        if not self.mask:
            return other
        base = min(self.base, other.base)
        return BlockSet(
            base, (self.mask << (self.base - base)) | (other.mask << (other.base - base))
        )

    def __and__(self, other: BlockSet) -> BlockSet:
        if not (self.mask and other.mask):
            return EMPTY
        base = min(self.base, other.base)
        return BlockSet(
            base, (self.mask << (self.base - base)) & (other.mask << (other.base - base))
        )

    @staticmethod
    def union(sets: Iterable[BlockSet]) -> BlockSet:
        out = EMPTY
        for s in sets:
            out |= s
        return out

    def shifted(self, offset: int) -> BlockSet:
        """Every block number plus `offset` (a segment's postings count from its first
        block)."""
        return BlockSet(self.base + offset, self.mask) if self.mask else self

    def at_least(self, lowest: int) -> BlockSet:
        """The blocks numbered `lowest` or more."""
        if lowest <= self.base:
            return self
        return BlockSet(lowest, self.mask >> (lowest - self.base))

    def __len__(self) -> int:
        return self.mask.bit_count()

    def __bool__(self) -> bool:
        return bool(self.mask)

    def __contains__(self, block: object) -> bool:
        return (
            isinstance(block, int)
            and block >= self.base
            and bool((self.mask >> (block - self.base)) & 1)
        )

    def blocks(self) -> list[int]:
        """Ascending block numbers."""
        if not self.mask:
            return []
        digits = bin(self.mask)[:1:-1]  # bit 0 first
        return [self.base + m.start() for m in _ONES.finditer(digits)]

    def newest(self, count: int) -> list[int]:
        """At most `count` of the highest block numbers, highest first."""
        out: list[int] = []
        mask = self.mask
        while mask and len(out) < count:
            top = mask.bit_length() - 1
            out.append(self.base + top)
            mask ^= 1 << top
        return out

    # ------------------------------------------------------------ encoding

    def encode(self) -> bytes:
        """The smaller-in-practice encoding; see the module docstring."""
        count = len(self)
        width = self.mask.bit_length()
        if count > 1 and width <= _BITMAP_BITS_PER_BLOCK * count:
            return (
                bytes([_BITMAP])
                + _varint(self.base)
                + self.mask.to_bytes((width + 7) // 8, "little")
            )
        return _varint_list(self.blocks())

    @classmethod
    def decode(cls, raw: bytes) -> BlockSet:
        if not raw:
            raise IntegrityError("an encrypted index row has an empty posting list")
        if raw[0] == _BITMAP:
            base, offset = _read_varint(raw, 1)
            return cls(base, int.from_bytes(raw[offset:], "little"))
        if raw[0] != _LIST:
            raise IntegrityError("an encrypted index row has an unknown posting layout")
        numbers, offset, value = [], 1, 0
        while offset < len(raw):
            delta, offset = _read_varint(raw, offset)
            value += delta
            numbers.append(value)
        return cls.of(numbers)


EMPTY = BlockSet()
_BYTES = [bytes([i]) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:  # most: one-block lists count from their segment's first block
        return _BYTES[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_list(blocks: Iterable[int]) -> bytes:
    out = bytearray([_LIST])
    previous = 0
    for block in blocks:
        out += _varint(block - previous)
        previous = block
    return bytes(out)


def _read_varint(raw: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while offset < len(raw):
        byte = raw[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, offset
    raise IntegrityError("an encrypted index row has a truncated posting list")
