"""The encrypted index (EDB) as the storage sees it: one table of (label, segment, value).

Row = `label` (16 bytes, a PRF output), `segment` (the index segment it
belongs to, in clear so that retention and compaction can drop whole
segments), `value` = `nonce | AES-GCM(plaintext)` with associated data
`label | segment`. The plaintext is `keyword length u16 | keyword | count u32 |
delta-varint block numbers`, zero-padded to a power of two of at least
`MIN_VALUE` bytes, so a value's size says only which size class its postings
fall in. Each segment's row count is padded with dummy rows (random labels,
encrypting an empty keyword) to a size class of at most 1/16 overhead.

A value that fails authentication (altered, or moved to another label or
segment) raises `IntegrityError`. The value key is the enclave's own (derived
from the state key), not the analysts' index key.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection, Engine

from otrace.errors import IntegrityError
from query._trapdoor import LABEL_SIZE

__all__ = ["MIN_VALUE", "EdbCodec", "EdbRow", "EdbTable", "Postings", "padded_row_count"]

MIN_VALUE = 64
_NONCE = 12
_AD = b"otrace/edb/v1\x00"
_HEAD = struct.Struct("<H")
_COUNT = struct.Struct("<I")
_LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class EdbRow:
    label: bytes
    segment: int
    value: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Postings:
    """A decrypted row: the keyword (empty for a dummy) and its sorted block numbers."""

    keyword: str
    blocks: tuple[int, ...]


def padded_row_count(rows: int) -> int:
    """`rows` rounded up to a multiple of 2^(bit length - 4): at most 1/16 more rows."""
    step = 1 << max(0, rows.bit_length() - 4)
    return -(-rows // step) * step


class EdbCodec:
    """Encrypts and decrypts postings rows with the enclave's EDB value key."""

    def __init__(self, value_key: bytes, *, rng: Callable[[int], bytes] | None = None) -> None:
        self._aead = AESGCM(value_key)
        self._random = os.urandom if rng is None else rng

    def __repr__(self) -> str:
        return "EdbCodec()"

    def seal(self, label: bytes, segment: int, keyword: str, blocks: Iterable[int]) -> EdbRow:
        body = _encode_postings(keyword, sorted(blocks))
        nonce = self._random(_NONCE)
        ct = self._aead.encrypt(nonce, _pad(body), _ad(label, segment))
        return EdbRow(label, segment, nonce + ct)

    def dummy(self, segment: int) -> EdbRow:
        return self.seal(self._random(LABEL_SIZE), segment, "", ())

    def open(self, row: EdbRow) -> Postings:
        if len(row.value) < _NONCE + 16 + MIN_VALUE:
            raise IntegrityError("an encrypted index row is truncated")
        try:
            plain = self._aead.decrypt(
                row.value[:_NONCE], row.value[_NONCE:], _ad(row.label, row.segment)
            )
        except InvalidTag:
            raise IntegrityError(
                "an encrypted index row failed authentication (altered or moved)"
            ) from None
        return _decode_postings(plain)

    def segment_rows(
        self, segment: int, postings: dict[str, tuple[bytes, Iterable[int]]]
    ) -> list[EdbRow]:
        """A segment's rows (keyword -> (label, blocks)) plus dummies, in random order."""
        rows = [self.seal(label, segment, kw, blocks) for kw, (label, blocks) in postings.items()]
        rows += [self.dummy(segment) for _ in range(padded_row_count(len(rows)) - len(rows))]
        rows.sort(key=lambda r: r.label)  # labels are PRF outputs: a random order
        return rows


def _ad(label: bytes, segment: int) -> bytes:
    return _AD + label + segment.to_bytes(8, "big")


def _pad(body: bytes) -> bytes:
    size = max(MIN_VALUE, 1 << (len(body) - 1).bit_length())
    return body + bytes(size - len(body))


def _encode_postings(keyword: str, blocks: Sequence[int]) -> bytes:
    raw = keyword.encode()
    out = bytearray(_HEAD.pack(len(raw)) + raw + _COUNT.pack(len(blocks)))
    previous = 0
    for block in blocks:
        delta, previous = block - previous, block
        while delta >= 0x80:
            out.append((delta & 0x7F) | 0x80)
            delta >>= 7
        out.append(delta)
    return bytes(out)


def _decode_postings(plain: bytes) -> Postings:
    try:
        (length,) = _HEAD.unpack_from(plain)
        keyword = plain[2 : 2 + length].decode()
        (count,) = _COUNT.unpack_from(plain, 2 + length)
    except (struct.error, UnicodeDecodeError):
        raise IntegrityError("an encrypted index row has an unknown layout") from None
    offset, value, blocks = 6 + length, 0, []
    for _ in range(count):
        delta = shift = 0
        while True:
            if offset >= len(plain):
                raise IntegrityError("an encrypted index row has an unknown layout")
            byte = plain[offset]
            offset += 1
            delta |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        value += delta
        blocks.append(value)
    return Postings(keyword, tuple(blocks))


class EdbTable:
    """The `edb_<tree>` table; every method runs on a connection the caller provides."""

    def __init__(self, engine: Engine, tree_id: str) -> None:
        self.table = sa.Table(
            f"edb_{tree_id}",
            sa.MetaData(),
            sa.Column("label", sa.LargeBinary(LABEL_SIZE), primary_key=True),
            sa.Column("segment", sa.BigInteger, nullable=False, index=True),
            sa.Column("value", sa.LargeBinary, nullable=False),
        )
        self.table.create(engine, checkfirst=True)

    def insert(self, conn: Connection, rows: Sequence[EdbRow]) -> None:
        if rows:
            conn.execute(
                self.table.insert(),
                [{"label": r.label, "segment": r.segment, "value": r.value} for r in rows],
            )

    def lookup(self, conn: Connection, labels: Sequence[bytes]) -> list[EdbRow]:
        """The rows stored under `labels` (absent labels are simply missing)."""
        t, out = self.table, []
        for start in range(0, len(labels), _LOOKUP_CHUNK):
            chunk = list(labels[start : start + _LOOKUP_CHUNK])
            query = sa.select(t.c.label, t.c.segment, t.c.value).where(t.c.label.in_(chunk))
            out += [EdbRow(bytes(a), int(b), bytes(c)) for a, b, c in conn.execute(query)]
        return out

    def segment_rows(self, conn: Connection, segments: Sequence[int]) -> list[EdbRow]:
        t = self.table
        query = sa.select(t.c.label, t.c.segment, t.c.value).where(t.c.segment.in_(segments))
        return [EdbRow(bytes(a), int(b), bytes(c)) for a, b, c in conn.execute(query)]

    def delete_segments(self, conn: Connection, segments: Sequence[int]) -> None:
        if segments:
            conn.execute(self.table.delete().where(self.table.c.segment.in_(list(segments))))

    def count(self, conn: Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())
