"""The durable, encrypted ingest journal (inside the enclave).

An Export is acknowledged only once its validated request is in the journal:
one row per request, AES-GCM under the journal key with the sequence number
as associated data, the plaintext padded to a power-of-two size class (at
least 1 KiB) so row sizes reveal only a coarse request size. Many requests
commit in one transaction (group commit). The drainer reads entries after the
watermark it committed with the ORAM; entries at or below it are deleted.

Several processes may append to one journal (collector replicas sharing a
PostgreSQL store). Sequence numbers are allocated inside the insert's own
transaction from the single-row `ingest_journal_head` (`UPDATE ... SET
last_seq = last_seq + n`): the row lock serialises appenders, so entries
commit in sequence order and readers only ever see a contiguous prefix; an
aborted append rolls its allocation back with it, so numbering never skips.
A hole in the middle is therefore never legitimate and `read_after` still
reports it as an `IntegrityError`. (A database SEQUENCE would leave gaps on
rollback and let a later number commit before an earlier one.) The head also
survives truncation, so numbering continues after the journal was emptied.
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
        seq_type = sa.BigInteger().with_variant(sa.Integer, "sqlite")
        self._table = sa.Table(
            "ingest_journal",
            meta,
            sa.Column("seq", seq_type, primary_key=True, autoincrement=False),
            sa.Column("blob", sa.LargeBinary, nullable=False),
        )
        self._head = sa.Table(
            "ingest_journal_head",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("last_seq", seq_type, nullable=False),
        )
        try:
            meta.create_all(engine)
            self._next = self._create_head() + 1
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot open the ingest journal: {exc}") from exc

    def _create_head(self) -> int:
        """The head's value, creating the row (from the newest entry) if it is missing."""
        with self._engine.begin() as conn:
            last = conn.execute(sa.select(self._head.c.last_seq)).scalar()
            if last is not None:
                return int(last)
            newest = conn.execute(sa.select(sa.func.max(self._table.c.seq))).scalar() or 0
        try:
            with self._engine.begin() as conn:
                conn.execute(self._head.insert(), {"id": 1, "last_seq": newest})
        except sa.exc.IntegrityError:
            pass  # another process created it first
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(self._head.c.last_seq)).scalar_one())

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
        h = self._head
        try:
            with self._lock, self._engine.begin() as conn:
                conn.execute(h.update().where(h.c.last_seq < watermark).values(last_seq=watermark))
                self._next = max(self._next, watermark + 1)
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot advance the ingest journal head: {exc}") from exc

    @property
    def last_seq(self) -> int:
        """The newest sequence number this process appended or saw allocated."""
        return self._next - 1

    def append(self, payloads: Sequence[bytes]) -> list[int]:
        """Durably appends `payloads` in one transaction; returns their sequence numbers."""
        if not payloads:
            return []
        h = self._head
        allocate = h.update().values(last_seq=h.c.last_seq + len(payloads)).returning(h.c.last_seq)
        with self._lock:
            try:
                with self._engine.begin() as conn:
                    # Locks the head row until this transaction ends (see the module docstring).
                    last = int(conn.execute(allocate).scalar_one())
                    seqs = list(range(last - len(payloads) + 1, last + 1))
                    rows = [
                        {"seq": s, "blob": self._seal(s, p)}
                        for s, p in zip(seqs, payloads, strict=True)
                    ]
                    conn.execute(self._table.insert(), rows)
            except sa.exc.SQLAlchemyError as exc:
                raise StorageError(f"the ingest journal refused a write: {exc}") from exc
            self._next = max(self._next, last + 1)
        return seqs

    def pending(self) -> int:
        """Entries stored now (not yet truncated), whoever appended them."""
        try:
            with self._engine.connect() as conn:
                count = sa.select(sa.func.count()).select_from(self._table)
                return int(conn.execute(count).scalar_one())
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot read the ingest journal: {exc}") from exc

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
