"""The encrypted index (EDB) as the storage sees it: fixed-count buckets of packed postings.

A segment with K keywords has B = the power of two at or above K/32 buckets,
each one row `edb_<tree>(slot, segment, value)` with `slot = segment * 2^32 +
bucket` (segment and bucket are in clear; every bucket exists, full or not).
`value` = `nonce | AES-GCM(plaintext)` with associated data `segment | bucket`;
the plaintext is `count u32`, then per keyword `tag (16) | keyword length u16 |
keyword | postings count u32 | delta-varint absolute block numbers`, zero-padded
to a power of two of at least `MIN_VALUE` bytes. The storage learns B (K within
a factor of two) and each bucket's size class; a lookup touches one bucket,
shared with ~31 other keywords.

A value that fails authentication (altered, or moved to another slot) raises
`IntegrityError`. The value key is the enclave's own (derived from the state
key), not the analysts' index key.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection, Engine

from otrace.errors import IntegrityError
from query._trapdoor import TAG_SIZE

__all__ = [
    "BUCKET_TARGET",
    "MIN_VALUE",
    "EdbCodec",
    "EdbRow",
    "EdbTable",
    "Postings",
    "bucket_count",
    "slot_of",
]

BUCKET_TARGET = 32  # keywords per bucket, on average
MIN_VALUE = 256
_NONCE = 12
_AD = b"otrace/edb/v2\x00"
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct(f"<{TAG_SIZE}sH")
_LOOKUP_CHUNK = 500


def bucket_count(keywords: int) -> int:
    """Buckets of a segment with `keywords` keywords: a power of two, ~32 keywords each."""
    needed = max(1, -(-keywords // BUCKET_TARGET))
    return 1 << (needed - 1).bit_length()


def slot_of(segment: int, bucket: int) -> int:
    return (segment << 32) | bucket


@dataclass(frozen=True, slots=True)
class EdbRow:
    segment: int
    bucket: int
    value: bytes = field(repr=False)

    @property
    def slot(self) -> int:
        return slot_of(self.segment, self.bucket)


class Postings(NamedTuple):
    """One keyword's entry in a bucket: its tag, the keyword, its sorted block numbers.
    (A tuple: ingest builds one per keyword, about 3.5 per span.)"""

    tag: bytes
    keyword: str
    blocks: tuple[int, ...]


class EdbCodec:
    """Encrypts and decrypts buckets with the enclave's EDB value key."""

    def __init__(self, value_key: bytes, *, rng: Callable[[int], bytes] | None = None) -> None:
        self._aead = AESGCM(value_key)
        self._random = os.urandom if rng is None else rng

    def __repr__(self) -> str:
        return "EdbCodec()"

    def seal(self, segment: int, bucket: int, entries: Iterable[Postings]) -> EdbRow:
        items = list(entries)
        body = b"".join([_COUNT.pack(len(items)), *(_encode_entry(p) for p in items)])
        size = max(MIN_VALUE, 1 << (len(body) - 1).bit_length())
        nonce = self._random(_NONCE)
        value = nonce + self._aead.encrypt(nonce, body.ljust(size, b"\0"), _ad(segment, bucket))
        return EdbRow(segment, bucket, value)

    def open(self, row: EdbRow) -> list[Postings]:
        """Every entry of a bucket; a bucket that fails authentication raises."""
        if len(row.value) < _NONCE + 16 + MIN_VALUE:
            raise IntegrityError("an encrypted index row is truncated")
        try:
            plain = self._aead.decrypt(
                row.value[:_NONCE], row.value[_NONCE:], _ad(row.segment, row.bucket)
            )
        except InvalidTag:
            raise IntegrityError(
                "an encrypted index row failed authentication (altered or moved)"
            ) from None
        return _decode_entries(plain)

    def segment_rows(
        self, segment: int, buckets: Mapping[int, Sequence[Postings]], count: int
    ) -> list[EdbRow]:
        """All `count` buckets of a segment (empty ones too)."""
        return [self.seal(segment, b, buckets.get(b, ())) for b in range(count)]


def _ad(segment: int, bucket: int) -> bytes:
    return _AD + segment.to_bytes(8, "big") + bucket.to_bytes(4, "big")


def _encode_entry(p: Postings) -> bytes:
    raw = p.keyword.encode()
    out = bytearray(_ENTRY.pack(p.tag, len(raw)))
    out += raw
    out += _COUNT.pack(len(p.blocks))
    if len(p.blocks) == 1 and p.blocks[0] < 0x80:
        out.append(p.blocks[0])
        return bytes(out)
    previous = 0
    for block in p.blocks:
        delta, previous = block - previous, block
        while delta >= 0x80:
            out.append((delta & 0x7F) | 0x80)
            delta >>= 7
        out.append(delta)
    return bytes(out)


def _decode_entries(plain: bytes) -> list[Postings]:
    try:
        (count,) = _COUNT.unpack_from(plain)
        offset, out = _COUNT.size, []
        for _ in range(count):
            tag, length = _ENTRY.unpack_from(plain, offset)
            offset += _ENTRY.size
            keyword = plain[offset : offset + length].decode()
            offset += length
            (n,) = _COUNT.unpack_from(plain, offset)
            offset += _COUNT.size
            blocks, value = [], 0
            for _ in range(n):
                delta = shift = 0
                while True:
                    byte = plain[offset]
                    offset += 1
                    delta |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                value += delta
                blocks.append(value)
            out.append(Postings(tag, keyword, tuple(blocks)))
        return out
    except (struct.error, UnicodeDecodeError, IndexError):
        raise IntegrityError("an encrypted index row has an unknown layout") from None


class EdbTable:
    """The `edb_<tree>` table; every method runs on a connection the caller provides."""

    def __init__(self, engine: Engine, tree_id: str) -> None:
        self.table = sa.Table(
            f"edb_{tree_id}",
            sa.MetaData(),
            sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("segment", sa.BigInteger, nullable=False, index=True),
            sa.Column("value", sa.LargeBinary, nullable=False),
        )
        self.table.create(engine, checkfirst=True)
        self._insert = self.table.insert()

    def insert(self, conn: Connection, rows: Sequence[EdbRow]) -> None:
        if rows:
            conn.execute(
                self._insert,
                [{"slot": r.slot, "segment": r.segment, "value": r.value} for r in rows],
            )

    def lookup(self, conn: Connection, slots: Sequence[int]) -> list[EdbRow]:
        """The buckets stored at `slots` (absent slots are simply missing)."""
        t, out = self.table, []
        wanted = sorted(set(slots))
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            query = sa.select(t.c.slot, t.c.segment, t.c.value).where(t.c.slot.in_(chunk))
            out += [_row(*r) for r in conn.execute(query)]
        return out

    def segment_rows(self, conn: Connection, segments: Sequence[int]) -> list[EdbRow]:
        t = self.table
        query = sa.select(t.c.slot, t.c.segment, t.c.value).where(t.c.segment.in_(segments))
        return [_row(*r) for r in conn.execute(query)]

    def delete_segments(self, conn: Connection, segments: Sequence[int]) -> None:
        if segments:
            conn.execute(self.table.delete().where(self.table.c.segment.in_(list(segments))))

    def count(self, conn: Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())


def _row(slot: int, segment: int, value: bytes) -> EdbRow:
    slot, segment = int(slot), int(segment)
    if slot >> 32 != segment:
        raise IntegrityError(f"an encrypted index row at slot {slot} names segment {segment}")
    return EdbRow(segment, slot & 0xFFFFFFFF, bytes(value))
