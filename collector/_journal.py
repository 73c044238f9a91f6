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
last_seq = last_seq + n RETURNING`): the row lock serialises appenders, so
entries commit in sequence order and readers only ever see a contiguous
prefix; an aborted append rolls its allocation back with it, so numbering never
skips and a hole in the middle is never legitimate. (A database SEQUENCE would
leave gaps on rollback and let a later number commit before an earlier one.)
The row survives truncation, so numbering continues after the journal empties.

Freshness: the same row carries a sealed *head* (the last sequence number
appended, AES-GCM under the journal key), rewritten in the same transaction as
every append (`last_seq` beside it only allocates and is never trusted), and a
monotonic counter outside the data directory is advanced to it after the
commit, before the Export is answered. So the storage can neither drop the
newest entries (the head names them), nor put back an older head with them
(the counter is ahead), nor roll the whole journal back (ditto). Checked when
the journal is opened, when the ingest engine resumes from its watermark, and
on every drain.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import event
from sqlalchemy.engine import Engine

from otrace.errors import ConfigError, IntegrityError, RollbackError, StorageError

__all__ = ["Journal", "JournalCounter", "size_class"]

_LEN = struct.Struct("<I")
_MIN_CLASS = 1024
_HEAD = struct.Struct("<BQ")  # layout version, last sequence number appended
_HEAD_VERSION = 1
_HEAD_AD = b"otrace-journal-head\x00"
_READ_CHUNK = 8  # rows fetched at a time by `read_after`


class JournalCounter(Protocol):
    """A monotonic counter (`tee.MonotonicCounter`) holding the last sequence number appended."""

    def current(self) -> int: ...

    def advance(self, value: int) -> None: ...


def size_class(length: int) -> int:
    """The padded plaintext size for a payload of `length` bytes (with its length prefix)."""
    need = length + _LEN.size
    return max(_MIN_CLASS, 1 << (need - 1).bit_length())


class Journal:
    """Append-only encrypted journal over one SQL table, with a sealed head."""

    def __init__(
        self, engine: Engine, key: bytes, *, counter: JournalCounter | None = None
    ) -> None:
        if len(key) != 32:
            raise ConfigError("the journal key must be 32 bytes")
        self._engine = engine
        self._aead = AESGCM(key)
        self._counter = counter
        self._lock = threading.Lock()
        meta = sa.MetaData()
        seq_type = sa.BigInteger().with_variant(sa.Integer, "sqlite")
        self._table = sa.Table(
            "ingest_journal",
            meta,
            sa.Column("seq", seq_type, primary_key=True, autoincrement=False),
            sa.Column("blob", sa.LargeBinary, nullable=False),
        )
        self._heads = sa.Table(
            "ingest_journal_head",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("last_seq", seq_type, nullable=False),  # allocation only, not trusted
            sa.Column("blob", sa.LargeBinary, nullable=False),  # the sealed head; b"" before it
        )
        try:
            meta.create_all(engine)
            self._create_head_row()
            with engine.connect() as conn:
                last = conn.execute(sa.select(sa.func.max(self._table.c.seq))).scalar()
                head = self._read_head(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot open the ingest journal: {_first_line(exc)}") from exc
        self._head = self._check_open(head, last)
        # No head, no entry, counter at 0: a new journal, or one written before heads
        # existed (upgrade); `resume_after` may then adopt the ORAM's watermark.
        self._headless = head is None
        self._next = self._head + 1

    @classmethod
    def sqlite(cls, path: str, key: bytes, *, counter: JournalCounter | None = None) -> Journal:
        """A journal in its own SQLite file (WAL, fsync on commit)."""
        engine = sa.create_engine(f"sqlite:///{path}")

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        return cls(engine, key, counter=counter)

    def resume_after(self, watermark: int) -> None:
        """Checks that every entry after `watermark` (what the ORAM holds) up to the head is
        present, then numbers new entries after the head."""
        with self._lock:
            # Other replicas may have appended since this process opened the journal:
            # look at the stored head, never at this process's possibly stale view.
            try:
                with self._engine.connect() as conn:
                    stored = self._read_head(conn)
            except sa.exc.SQLAlchemyError as exc:
                raise StorageError(f"cannot read the ingest journal: {_first_line(exc)}") from exc
            if stored is not None:
                self._head, self._headless = max(self._head, stored), False
                self._next = max(self._next, self._head + 1)
            if watermark > self._head and self._headless:
                self._adopt(watermark)
            if watermark > self._head:
                raise RollbackError(
                    f"the ingest journal ends at entry {self._head} but the ORAM already holds "
                    f"entries up to {watermark}: the journal was rolled back or replaced"
                )
            t = self._table
            query = sa.select(sa.func.count()).where(t.c.seq > watermark, t.c.seq <= self._head)
            try:
                with self._engine.connect() as conn:
                    present = int(conn.execute(query).scalar() or 0)
            except sa.exc.SQLAlchemyError as exc:
                raise StorageError(f"cannot read the ingest journal: {_first_line(exc)}") from exc
            if present != self._head - watermark:
                raise IntegrityError(
                    f"ingest journal entries after {watermark} up to its sealed head "
                    f"{self._head}: {self._head - watermark - present} of "
                    f"{self._head - watermark} are missing from storage (deleted or truncated)"
                )

    @property
    def last_seq(self) -> int:
        return self._next - 1

    def append(self, payloads: Sequence[bytes]) -> list[int]:
        """Durably appends `payloads` and advances the sealed head, in one transaction, then
        the monotonic counter; returns their sequence numbers."""
        if not payloads:
            return []
        h = self._heads
        allocate = (
            h.update()
            .where(h.c.id == 0)
            .values(last_seq=h.c.last_seq + len(payloads))
            .returning(h.c.last_seq)
        )
        with self._lock:
            try:
                with self._engine.begin() as conn:
                    # Locks the head row until this transaction ends (see the module docstring).
                    head = int(conn.execute(allocate).scalar_one())
                    seqs = list(range(head - len(payloads) + 1, head + 1))
                    rows = [
                        {"seq": s, "blob": self._seal(s, p)}
                        for s, p in zip(seqs, payloads, strict=True)
                    ]
                    conn.execute(self._table.insert(), rows)
                    self._write_head(conn, head)
            except sa.exc.SQLAlchemyError as exc:
                raise StorageError(
                    f"the ingest journal refused a write: {_first_line(exc)}"
                ) from exc
            self._next = max(self._next, head + 1)
            self._head, self._headless = max(self._head, head), False
            if self._counter is not None:
                # After the commit: a crash in between leaves the head ahead of the
                # counter, which opening accepts; the Export is not answered yet.
                self._counter.advance(head)
        return seqs

    def pending(self) -> int:
        """Entries stored now (not yet truncated), whoever appended them."""
        try:
            with self._engine.connect() as conn:
                count = sa.select(sa.func.count()).select_from(self._table)
                return int(conn.execute(count).scalar_one())
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot read the ingest journal: {_first_line(exc)}") from exc

    def read_after(
        self, watermark: int, limit: int, max_bytes: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` entries after `watermark`, in order, and with `max_bytes` only the
        leading ones whose bodies fit in it (at least one). A gap, or fewer entries than
        the sealed head names, is an `IntegrityError`; an older head a `RollbackError`.

        Rows are fetched and opened a few at a time, so entries past `max_bytes` are never
        read: an epoch takes ~30 Exports, and reading the 256 a backlogged journal offered
        cost the writer ~9 us a span (py-spy, `otrace bench ingest --spans 1000000`)."""
        t = self._table
        query = (
            sa.select(t.c.seq, t.c.blob).where(t.c.seq > watermark).order_by(t.c.seq).limit(limit)
        )
        # What was appended is known *before* the read: an append committing meanwhile
        # only moves the stored head further up, never below this floor.
        floor = self._appended()
        out: list[tuple[int, bytes]] = []
        gap = full = False
        total = 0
        try:
            with self._engine.connect() as conn:
                head = self._read_head(conn)
                rows = conn.execution_options(yield_per=_READ_CHUNK).execute(query)
                for expected, (seq, blob) in enumerate(rows, start=watermark + 1):
                    if seq != expected:
                        gap = True
                        break
                    body = self._open(seq, bytes(blob))
                    total += len(body)
                    if max_bytes is not None and out and total > max_bytes:
                        full = True
                        break
                    out.append((seq, body))
                rows.close()
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot read the ingest journal: {_first_line(exc)}") from exc
        stored = self._check_stored_head(head, floor)
        if gap:
            raise IntegrityError(
                f"ingest journal entry {watermark + len(out) + 1} is missing from storage"
            )
        wanted = min(limit, stored - watermark)
        if len(out) < wanted and not full:
            raise IntegrityError(
                f"ingest journal entries {watermark + len(out) + 1}..{stored} are missing from "
                f"storage: the journal was truncated below its sealed head ({stored})"
            )
        return out

    def truncate(self, upto: int) -> None:
        """Deletes entries at or below `upto` (already in the ORAM); the head stays."""
        try:
            with self._engine.begin() as conn:
                conn.execute(self._table.delete().where(self._table.c.seq <= upto))
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot truncate the ingest journal: {_first_line(exc)}") from exc

    def close(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------ head

    def _create_head_row(self) -> None:
        """The head row, created unsealed (numbering from the newest entry) if missing."""
        with self._engine.begin() as conn:
            if conn.execute(sa.select(self._heads.c.id)).first() is not None:
                return
            newest = conn.execute(sa.select(sa.func.max(self._table.c.seq))).scalar() or 0
        try:
            with self._engine.begin() as conn:
                conn.execute(self._heads.insert(), {"id": 0, "last_seq": newest, "blob": b""})
        except sa.exc.IntegrityError:
            pass  # another replica created it first

    def _adopt(self, watermark: int) -> None:
        """Upgrade from a journal without a head: trust the ORAM's watermark once."""
        h = self._heads
        try:
            with self._engine.begin() as conn:
                # Never backwards: another writer's numbers must not be handed out again.
                conn.execute(
                    h.update()
                    .where(h.c.id == 0)
                    .values(
                        last_seq=sa.case((h.c.last_seq < watermark, watermark), else_=h.c.last_seq)
                    )
                )
                self._write_head(conn, watermark)
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot write the ingest journal head: {_first_line(exc)}") from exc
        if self._counter is not None:
            self._counter.advance(watermark)
        self._head, self._next, self._headless = watermark, watermark + 1, False

    def _check_open(self, head: int | None, last: int | None) -> int:
        floor = self._counter.current() if self._counter is not None else 0
        if head is None:
            if last is not None:
                raise IntegrityError(
                    "the ingest journal holds entries but no sealed head (deleted, or the "
                    "journal was written by an older otrace: drain it with that version first)"
                )
            if floor:
                raise RollbackError(
                    f"the ingest journal is empty and has no sealed head, but the monotonic "
                    f"counter says {floor} entries were appended: it was deleted or replaced"
                )
            return 0
        if head < floor:
            raise RollbackError(
                f"the ingest journal's sealed head is at entry {head} but the monotonic counter "
                f"says {floor}: the journal was restored to an older copy"
            )
        if last is not None and last > head:
            raise IntegrityError(
                f"the ingest journal holds entry {last} beyond its sealed head {head}: an older "
                "head was put back"
            )
        if self._counter is not None:
            self._counter.advance(head)  # a crash after commit left the counter behind
        return head

    def _appended(self) -> int:
        # Both are set only after their commit: no lock, so a drain never waits on an append.
        return max(self._head, self._counter.current() if self._counter is not None else 0)

    def _check_stored_head(self, head: int | None, floor: int) -> int:
        if head is None and floor == 0:
            return 0
        if head is None or head < floor:
            raise RollbackError(
                f"the ingest journal's sealed head in storage is at entry {head or 0}, but "
                f"{floor} entries were appended: the journal was rolled back"
            )
        return head

    def _read_head(self, conn: Any) -> int | None:
        blob = conn.execute(sa.select(self._heads.c.blob).where(self._heads.c.id == 0)).scalar()
        if not blob:  # no row, or not sealed yet
            return None
        blob = bytes(blob)
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], _HEAD_AD)
        except InvalidTag:
            raise IntegrityError("the ingest journal's sealed head failed authentication") from None
        if len(plain) != _HEAD.size or plain[0] != _HEAD_VERSION:
            raise IntegrityError("the ingest journal's sealed head is malformed")
        return int(_HEAD.unpack(plain)[1])

    def _write_head(self, conn: Any, last: int) -> None:
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, _HEAD.pack(_HEAD_VERSION, last), _HEAD_AD)
        conn.execute(self._heads.update().where(self._heads.c.id == 0).values(blob=blob))

    # --------------------------------------------------------------- entries

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


def _first_line(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's error without the statement and its parameters (ciphertext, schema):
    this text reaches OTLP clients in the UNAVAILABLE answer."""
    return str(exc).split("\n", 1)[0]


def _ad(seq: int) -> bytes:
    return b"otrace-journal\x00" + struct.pack("<Q", seq)
