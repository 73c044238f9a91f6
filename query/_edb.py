"""The encrypted index (EDB) as the storage sees it: fixed-count buckets of packed postings.

A segment with K keywords has B = the power of two at or above K/32 buckets,
each one row `edb_<tree>(slot, segment, value)` with `slot = segment * 2^32 +
bucket` (segment and bucket are in clear; every bucket exists, full or not).
`value` = `nonce | AES-GCM(plaintext)` with associated data `segment | bucket`;
the plaintext is `count u32`, then per keyword `trapdoor (32) | length u32 |
posting list (length bytes; `query._postings`: varints or a bitmap, of block
numbers counted from the segment's first block)`, zero-padded
to a power of two of at least `MIN_VALUE` bytes. The storage learns B (K within
a factor of two) and each bucket's size class; a lookup touches one bucket,
shared with ~31 other keywords.

A value that fails authentication (altered, or moved to another slot) raises
`IntegrityError`. The value key is the enclave's own (derived from the state
key), not the analysts' index key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection, Engine

from otrace.errors import IntegrityError
from query._buckets import bucket_entries, pack_buckets
from query._postings import BlockSet

__all__ = [
    "BUCKET_TARGET",
    "MIN_VALUE",
    "EdbCodec",
    "EdbRow",
    "EdbTable",
    "Postings",
    "RawEntry",
    "bucket_count",
    "slot_of",
]

BUCKET_TARGET = 32  # keywords per bucket, on average
MIN_VALUE = 256
_NONCE = 12
# v5: postings count from the segment's first block; v4: buckets located by AES under a
# segment key (`query._trapdoor`); v3: posting lists carry their encoding. Rows of
# earlier formats do not open, and are recognised only to say which otrace wrote them.
_AD = b"otrace/edb/v5\x00"
_EARLIER = {
    "v4": b"otrace/edb/v4\x00",
    "v3": b"otrace/edb/v3\x00",
    "v2": b"otrace/edb/v2\x00",
}
RawEntry = tuple[bytes, bytes]  # (trapdoor, encoded posting list): copied as is by merges
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
    """One keyword's entry in a bucket: its trapdoor and its sorted block numbers.
    (A tuple: ingest builds one per keyword, about 3.5 per span.)"""

    trapdoor: bytes
    blocks: tuple[int, ...]


class EdbCodec:
    """Encrypts and decrypts buckets with the enclave's EDB value key."""

    def __init__(self, value_key: bytes, *, rng: Callable[[int], bytes] | None = None) -> None:
        self._aead = AESGCM(value_key)
        self._random = os.urandom if rng is None else rng

    def __repr__(self) -> str:
        return "EdbCodec()"

    def seal(self, segment: int, bucket: int, entries: Iterable[Postings]) -> EdbRow:
        """One bucket from its keywords' postings (segments are sealed by `segment_rows`)."""
        raw = [(p.trapdoor, BlockSet.of(p.blocks).encode()) for p in entries]
        # A segment of one bucket: every entry lands in it, whatever its locator.
        body = pack_buckets(raw, bytes(16 * len(raw)), 1, MIN_VALUE)[0]
        return self.seal_body(segment, bucket, body)

    def seal_body(self, segment: int, bucket: int, body: bytes) -> EdbRow:
        """A bucket from its padded plaintext (`query._buckets.pack_buckets`)."""
        nonce = self._random(_NONCE)
        sealed = self._aead.encrypt(nonce, body, _ad(segment, bucket))
        return EdbRow(segment, bucket, nonce + sealed)

    def open_raw(self, row: EdbRow) -> list[RawEntry]:
        """A bucket's (trapdoor, encoded postings) pairs; failing authentication raises."""
        try:
            return bucket_entries(self.open_body(row))
        except ValueError as exc:  # authenticated, but not a layout this code writes
            raise IntegrityError(str(exc)) from None

    def open_body(self, row: EdbRow) -> bytes:
        """A bucket's padded plaintext; failing authentication raises."""
        if len(row.value) < _NONCE + 16 + MIN_VALUE:
            raise IntegrityError("an encrypted index row is truncated")
        try:
            return self._aead.decrypt(
                row.value[:_NONCE], row.value[_NONCE:], _ad(row.segment, row.bucket)
            )
        except InvalidTag:
            earlier = self._earlier_format(row)
            if earlier is not None:
                raise IntegrityError(
                    f"this search index was written by an earlier otrace (index format "
                    f"{earlier}) and cannot be read by this one: start with a new data "
                    "directory and store, or read it with the earlier version"
                ) from None
            raise IntegrityError(
                "an encrypted index row failed authentication (altered or moved)"
            ) from None

    def _earlier_format(self, row: EdbRow) -> str | None:
        where = row.segment.to_bytes(8, "big") + row.bucket.to_bytes(4, "big")
        for version, label in _EARLIER.items():
            try:
                self._aead.decrypt(row.value[:_NONCE], row.value[_NONCE:], label + where)
            except InvalidTag:
                continue
            return version
        return None

    def open(self, row: EdbRow) -> list[Postings]:
        """Every entry of a bucket, decoded."""
        return [
            Postings(door, tuple(BlockSet.decode(raw).blocks())) for door, raw in self.open_raw(row)
        ]

    def find(self, row: EdbRow, trapdoors: Collection[bytes]) -> dict[bytes, BlockSet]:
        """The postings of those `trapdoors` the bucket holds (only they are decoded)."""
        return {door: BlockSet.decode(raw) for door, raw in self.open_raw(row) if door in trapdoors}

    def segment_rows(
        self, segment: int, entries: list[RawEntry], locators: bytes, count: int
    ) -> list[EdbRow]:
        """All `count` buckets of a segment (empty ones too), each entry in the bucket its
        locator names (`Locator.blocks`)."""
        bodies = pack_buckets(entries, locators, count, MIN_VALUE)
        return [self.seal_body(segment, b, body) for b, body in enumerate(bodies)]


def _ad(segment: int, bucket: int) -> bytes:
    return _AD + segment.to_bytes(8, "big") + bucket.to_bytes(4, "big")


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
        # Plain SQL with tuple parameters: through SQLAlchemy's compiled insert, building
        # and processing parameters was ~half the time of inserting a segment's rows
        # (~2k an epoch, ~16k a merge; py-spy of the node's writer).
        m = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._insert_sql = (
            f'INSERT INTO "{self.table.name}" (slot, segment, value) VALUES ({m}, {m}, {m})'
        )

    def insert(self, conn: Connection, rows: Sequence[EdbRow]) -> None:
        if rows:
            conn.exec_driver_sql(self._insert_sql, [(r.slot, r.segment, r.value) for r in rows])

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
        raise IntegrityError(
            f"an encrypted index row was moved to another segment (slot {slot} is in segment "
            f"{slot >> 32}, the row says {segment})"
        )
    return EdbRow(segment, slot & 0xFFFFFFFF, bytes(value))
