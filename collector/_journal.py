"""The durable, encrypted ingest journal (inside the enclave).

An Export is acknowledged only once its validated request is in the journal:
one row per request, AES-GCM under the journal key with the sequence number
as associated data, the plaintext padded to a power-of-two size class (at
least 1 KiB) so row sizes reveal only a coarse request size. Many requests
commit in one transaction (group commit). The drainer reads entries after the
watermark it committed with the ORAM; entries at or below it are deleted.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import event
from sqlalchemy.engine import Engine

from otrace.errors import ConfigError, IntegrityError, StorageError

__all__ = ["Journal", "size_class"]

_LEN = struct.Struct("<I")
_MIN_CLASS = 1024


def size_class(length: int) -> int:
    """The padded plaintext size for a payload of `length` bytes (with its length prefix)."""
    need = length + _LEN.size
    return max(_MIN_CLASS, 1 << (need - 1).bit_length())


class Journal:
    """Append-only encrypted journal over one SQL table."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError("the journal key must be 32 bytes")
        self._engine = engine
        self._aead = AESGCM(key)
        self._lock = threading.Lock()
        meta = sa.MetaData()
        self._table = sa.Table(
            "ingest_journal",
            meta,
            sa.Column(
                "seq",
                sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                primary_key=True,
                autoincrement=False,
            ),
            sa.Column("blob", sa.LargeBinary, nullable=False),
        )
        try:
            meta.create_all(engine)
            with engine.connect() as conn:
                last = conn.execute(sa.select(sa.func.max(self._table.c.seq))).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot open the ingest journal: {exc}") from exc
        self._next = (last or 0) + 1

    @classmethod
    def sqlite(cls, path: str, key: bytes) -> Journal:
        """A journal in its own SQLite file (WAL, fsync on commit)."""
        engine = sa.create_engine(f"sqlite:///{path}")

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        return cls(engine, key)

    def resume_after(self, watermark: int) -> None:
        """Numbers new entries after `watermark`, even when every entry was truncated."""
        with self._lock:
            self._next = max(self._next, watermark + 1)

    @property
    def last_seq(self) -> int:
        return self._next - 1

    def append(self, payloads: Sequence[bytes]) -> list[int]:
        """Durably appends `payloads` in one transaction; returns their sequence numbers."""
        with self._lock:
            seqs = list(range(self._next, self._next + len(payloads)))
            rows = [
                {"seq": s, "blob": self._seal(s, p)} for s, p in zip(seqs, payloads, strict=True)
            ]
            try:
                with self._engine.begin() as conn:
                    conn.execute(self._table.insert(), rows)
            except sa.exc.SQLAlchemyError as exc:
                raise StorageError(f"the ingest journal refused a write: {exc}") from exc
            self._next += len(payloads)
        return seqs

    def read_after(self, watermark: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` entries after `watermark`, in order; a gap is an `IntegrityError`."""
        t = self._table
        query = (
            sa.select(t.c.seq, t.c.blob).where(t.c.seq > watermark).order_by(t.c.seq).limit(limit)
        )
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot read the ingest journal: {exc}") from exc
        out = []
        for expected, (seq, blob) in enumerate(rows, start=watermark + 1):
            if seq != expected:
                raise IntegrityError(f"ingest journal entry {expected} is missing from storage")
            out.append((seq, self._open(seq, bytes(blob))))
        return out

    def truncate(self, upto: int) -> None:
        """Deletes entries at or below `upto` (already in the ORAM)."""
        try:
            with self._engine.begin() as conn:
                conn.execute(self._table.delete().where(self._table.c.seq <= upto))
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot truncate the ingest journal: {exc}") from exc

    def close(self) -> None:
        self._engine.dispose()

    def _seal(self, seq: int, payload: bytes) -> bytes:
        padded = _LEN.pack(len(payload)) + payload
        padded += bytes(size_class(len(payload)) - len(padded))
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, padded, _ad(seq))

    def _open(self, seq: int, blob: bytes) -> bytes:
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], _ad(seq))
        except InvalidTag:
            raise IntegrityError(f"ingest journal entry {seq} failed authentication") from None
        (length,) = _LEN.unpack_from(plain)
        return plain[_LEN.size : _LEN.size + length]


def _ad(seq: int) -> bytes:
    return b"otrace-journal\x00" + struct.pack("<Q", seq)
