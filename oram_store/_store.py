"""Untrusted bucket storage: the `BucketStore` interface and its SQL implementation.

The store holds, per tree, one fixed-size row per bucket `(idx) -> (version, blob)`,
the sealed client-state records (checkpoints and deltas) and a metadata row.
It sees ciphertext only and is trusted for nothing: the ORAM verifies every byte
it reads back.
"""

from __future__ import annotations

import itertools
import sqlite3
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from oram_store._checkpoint import WRITER_PAGES, WalCheckpointer
from otrace.errors import StorageError

__all__ = ["BucketStore", "SqlBucketStore", "StateRecord", "TreeTransaction"]

CHECKPOINT = 1
DELTA = 2
# SQLite's page cache for a tree transaction, in KiB (its default is 2,000): a group of
# ingest batches (`oram_store._group`) dirties ~40 MiB of pages, which at the default
# spill into the log before the commit. Other transactions keep the default.
WRITER_CACHE_KIB = 65536
_DEFAULT_CACHE_KIB = 2000
_PG_TREE_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))")


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One sealed client-state record as the storage holds it."""

    seq: int
    kind: int
    blob: bytes


class TreeTransaction(ABC):
    """Reads and writes of one tree inside one storage transaction."""

    @abstractmethod
    def read_buckets(self, idxs: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        """Returns `{idx: (version, blob)}` for the rows that exist among `idxs`."""

    @abstractmethod
    def write_buckets(self, rows: Sequence[tuple[int, int, bytes]]) -> None:
        """Overwrites existing rows in place with `(idx, version, blob)`."""

    @abstractmethod
    def load_state(self) -> list[StateRecord]:
        """The newest checkpoint and every record after it, oldest first."""

    @abstractmethod
    def latest_seq(self) -> int | None:
        """The sequence number of the newest state record (None if there is none)."""

    @abstractmethod
    def append_state(self, record: StateRecord) -> None:
        """Adds a sealed state record; `seq` must be new."""

    @abstractmethod
    def prune_state(self, before_seq: int) -> None:
        """Deletes state records older than `before_seq`."""

    @abstractmethod
    def read_aux(self, name: str) -> bytes | None:
        """A caller-owned record stored beside the tree (e.g. an ingest watermark)."""

    @abstractmethod
    def write_aux(self, name: str, blob: bytes) -> None:
        """Creates or replaces a caller-owned record, in this transaction."""


class BucketStore(ABC):
    """Untrusted storage for Path ORAM trees (see module docstring)."""

    @abstractmethod
    def create_tree(
        self,
        tree_id: str,
        rows: Iterable[tuple[int, int, bytes]],
        meta: bytes,
        first_state: Callable[[], StateRecord],
    ) -> None:
        """Stores a new tree's buckets in one streaming pass, then its first state and meta.

        `first_state` is called once every row has been consumed.

        The metadata row is written last, so a tree whose creation was interrupted
        has no metadata and is reported as incomplete rather than opened.
        """

    @abstractmethod
    def load_meta(self, tree_id: str) -> bytes | None:
        """The tree's metadata, or None when no complete tree of that id exists."""

    @abstractmethod
    def transaction(self, tree_id: str) -> AbstractContextManager[TreeTransaction]:
        """One atomic transaction on the tree (commits on success).

        It holds the tree's writer lock from its first statement, so a writer
        that died mid-commit has either committed or rolled back before another
        transaction on the tree reads anything.
        """

    @abstractmethod
    def drop_tree(self, tree_id: str) -> None:
        """Removes every row of the tree (used by tests and `--reset`)."""

    @abstractmethod
    def close(self) -> None:
        """Releases connections; the store is unusable afterwards."""


class _SqlTreeTransaction(TreeTransaction):
    def __init__(self, store: SqlBucketStore, conn: Connection, tree_id: str) -> None:
        self._conn = conn
        self._tree_id = tree_id
        self._state = store.state_table
        self._aux = _SqlAux(conn, store.aux_table, tree_id)
        self._select, self._update = store.bucket_statements(tree_id)
        # On SQLite the bucket statements are plain SQL with tuple parameters (below):
        # compiling and building SQLAlchemy parameters for ~320 rows a batch was ~10% of
        # an ingest batch. They still pass through the engine's cursor events, which the
        # leakage tests use to see every statement the storage receives.
        self._sqlite_table = store.bucket_table(tree_id).name if store.dialect == "sqlite" else None
        self._checkpointer = store._checkpointer
        # The two state statements every batch runs go straight to the driver:
        # SQLAlchemy's execution path costs ~80 us each, the driver ~10 us.
        self._latest_sql, self._append_sql = store.state_sql
        self._driver: Any = conn.connection.driver_connection

    @property
    def connection(self) -> Connection:
        """The open connection, for callers that must check a guard in the same transaction."""
        return self._conn

    def read_buckets(self, idxs: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        if self._sqlite_table is not None:
            if not idxs:
                return {}
            marks = ",".join("?" * len(idxs))
            sql = f'SELECT idx, version, blob FROM "{self._sqlite_table}" WHERE idx IN ({marks})'
            found = self._conn.exec_driver_sql(sql, tuple(idxs)).fetchall()
            return {idx: (version, blob) for idx, version, blob in found}  # blobs are bytes
        rows = self._conn.execute(self._select, {"idxs": list(idxs)})
        return {idx: (version, bytes(blob)) for idx, version, blob in rows}

    def write_buckets(self, rows: Sequence[tuple[int, int, bytes]]) -> None:
        if not rows:
            return
        if self._sqlite_table is not None:
            if self._checkpointer is not None:
                self._checkpointer.written(len(rows))
            sql = f'UPDATE "{self._sqlite_table}" SET version = ?, blob = ? WHERE idx = ?'
            updated = self._conn.exec_driver_sql(sql, [(v, b, i) for i, v, b in rows]).rowcount
        else:
            params = [{"b_idx": i, "b_version": v, "b_blob": b} for i, v, b in rows]
            updated = self._conn.execute(self._update, params).rowcount
        if updated != len(rows):
            raise StorageError(
                f"ORAM tree {self._tree_id!r}: {len(rows) - updated} bucket rows are "
                "missing from storage"
            )

    def load_state(self) -> list[StateRecord]:
        st = self._state
        last_checkpoint = (
            sa.select(sa.func.max(st.c.seq))
            .where(st.c.tree_id == self._tree_id, st.c.kind == CHECKPOINT)
            .scalar_subquery()
        )
        query = (
            sa.select(st.c.seq, st.c.kind, st.c.blob)
            .where(st.c.tree_id == self._tree_id, st.c.seq >= sa.func.coalesce(last_checkpoint, 0))
            .order_by(st.c.seq)
        )
        return [
            StateRecord(seq, kind, bytes(blob)) for seq, kind, blob in self._conn.execute(query)
        ]

    def latest_seq(self) -> int | None:
        row = self._driver.execute(self._latest_sql, (self._tree_id,)).fetchone()
        return None if row is None else int(row[0])

    def append_state(self, record: StateRecord) -> None:
        params = (self._tree_id, record.seq, record.kind, record.blob)
        self._driver.execute(self._append_sql, params)

    def read_aux(self, name: str) -> bytes | None:
        return self._aux.read(name)

    def write_aux(self, name: str, blob: bytes) -> None:
        self._aux.write(name, blob)

    def prune_state(self, before_seq: int) -> None:
        st = self._state
        self._conn.execute(st.delete().where(st.c.tree_id == self._tree_id, st.c.seq < before_seq))


class _SqlAux:
    """Caller-owned records (`oram_aux`): small blobs committed with the tree."""

    def __init__(self, conn: Connection, table: sa.Table, tree_id: str) -> None:
        self._conn, self._table, self._tree_id = conn, table, tree_id

    def read(self, name: str) -> bytes | None:
        t = self._table
        row = self._conn.execute(
            sa.select(t.c.blob).where(t.c.tree_id == self._tree_id, t.c.name == name)
        ).first()
        return None if row is None else bytes(row[0])

    def write(self, name: str, blob: bytes) -> None:
        t = self._table
        where = (t.c.tree_id == self._tree_id) & (t.c.name == name)
        if self._conn.execute(t.update().where(where).values(blob=blob)).rowcount == 0:
            self._conn.execute(t.insert(), {"tree_id": self._tree_id, "name": name, "blob": blob})


class SqlBucketStore(BucketStore):
    """`BucketStore` over SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL.

    One table per tree (`oram_<tree>`: idx primary key, version, blob), plus the
    shared `oram_state` and `oram_meta` tables. On PostgreSQL the blob column uses
    `STORAGE EXTERNAL` so ciphertext is never run through TOAST compression.
    """

    def __init__(self, url_or_engine: str | Engine, *, synchronous: str = "FULL") -> None:
        engine = (
            sa.create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        )
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite files are checkpointed beside the writer (`_checkpoint.py`).
        self._checkpointer: WalCheckpointer | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(engine, synchronous)
        elif self.dialect != "postgresql":
            raise StorageError(
                f"unsupported store {self.dialect!r}: use sqlite:// or postgresql+psycopg://"
            )
        self._metadata = sa.MetaData()
        self.state_table = sa.Table(
            "oram_state",
            self._metadata,
            sa.Column("tree_id", sa.String(32), primary_key=True),
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("kind", sa.SmallInteger, nullable=False),
            sa.Column("blob", sa.LargeBinary, nullable=False),
        )
        self.meta_table = sa.Table(
            "oram_meta",
            self._metadata,
            sa.Column("tree_id", sa.String(32), primary_key=True),
            sa.Column("meta", sa.LargeBinary, nullable=False),
        )
        self.aux_table = sa.Table(
            "oram_aux",
            self._metadata,
            sa.Column("tree_id", sa.String(32), primary_key=True),
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("blob", sa.LargeBinary, nullable=False),
        )
        self._buckets: dict[str, sa.Table] = {}
        self._statements: dict[str, tuple[sa.Select[Any], sa.Update]] = {}
        m = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self.state_sql = (
            f"SELECT seq FROM oram_state WHERE tree_id = {m} ORDER BY seq DESC LIMIT 1",
            f"INSERT INTO oram_state (tree_id, seq, kind, blob) VALUES ({m}, {m}, {m}, {m})",
        )
        dbapi: Any = engine.dialect.dbapi
        self._driver_error: type[Exception] = dbapi.Error
        try:
            tables = [self.state_table, self.meta_table, self.aux_table]
            self._metadata.create_all(engine, tables=tables)
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot open store {engine.url!r}: {exc}") from exc
        database = engine.url.database if self.dialect == "sqlite" else None
        if database and database != ":memory:" and not database.startswith("file:"):
            self._checkpointer = WalCheckpointer(database)
            # A store dropped without `close` does not leave its thread behind.
            weakref.finalize(self, self._checkpointer.stop)

    def bucket_table(self, tree_id: str) -> sa.Table:
        table = self._buckets.get(tree_id)
        if table is None:
            table = sa.Table(
                f"oram_{tree_id}",
                self._metadata,
                sa.Column(
                    "idx",
                    sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                    primary_key=True,
                    autoincrement=False,
                ),
                sa.Column("version", sa.BigInteger, nullable=False),
                sa.Column("blob", sa.LargeBinary, nullable=False),
            )
            self._buckets[tree_id] = table
        return table

    def bucket_statements(self, tree_id: str) -> tuple[sa.Select[Any], sa.Update]:
        """The tree's bucket SELECT ... IN and UPDATE, built once (hot path)."""
        cached = self._statements.get(tree_id)
        if cached is None:
            t = self.bucket_table(tree_id)
            select: sa.Select[Any] = sa.select(t.c.idx, t.c.version, t.c.blob).where(
                t.c.idx.in_(sa.bindparam("idxs", expanding=True))
            )
            update = (
                t.update()
                .where(t.c.idx == sa.bindparam("b_idx"))
                .values(version=sa.bindparam("b_version"), blob=sa.bindparam("b_blob"))
            )
            cached = self._statements[tree_id] = (select, update)
        return cached

    def create_tree(
        self,
        tree_id: str,
        rows: Iterable[tuple[int, int, bytes]],
        meta: bytes,
        first_state: Callable[[], StateRecord],
    ) -> None:
        if self.load_meta(tree_id) is not None:
            raise StorageError(f"ORAM tree {tree_id!r} already exists in this store")
        table = self.bucket_table(tree_id)
        table.drop(self.engine, checkfirst=True)  # leftovers of an interrupted creation
        with self.engine.begin() as conn:
            conn.execute(self.state_table.delete().where(self.state_table.c.tree_id == tree_id))
        table.create(self.engine)
        if self.dialect == "postgresql":
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    f'ALTER TABLE "{table.name}" ALTER COLUMN blob SET STORAGE EXTERNAL'
                )
        self._bulk_load(table, rows)
        with self.engine.begin() as conn:
            _SqlTreeTransaction(self, conn, tree_id).append_state(first_state())
            conn.execute(self.meta_table.insert(), {"tree_id": tree_id, "meta": meta})

    def _bulk_load(self, table: sa.Table, rows: Iterable[tuple[int, int, bytes]]) -> None:
        it = iter(rows)
        if self.dialect == "postgresql":
            with self.engine.begin() as conn:
                raw: Any = conn.connection.driver_connection
                with (
                    raw.cursor() as cur,
                    cur.copy(f'COPY "{table.name}" (idx, version, blob) FROM STDIN') as copy,
                ):
                    for row in it:
                        copy.write_row(row)
            return
        self._sqlite_bulk_insert(table, it)

    def _sqlite_bulk_insert(self, table: sa.Table, rows: Iterator[tuple[int, int, bytes]]) -> None:
        # WAL writes every page twice (log, then checkpoint). New pages of a new
        # table are not journaled in rollback mode, so loading in TRUNCATE mode
        # writes the tree about once, and a crash still rolls back cleanly.
        # Switching modes needs the only connection: drop the pooled ones first.
        with self._checkpointer.paused() if self._checkpointer else nullcontext():
            self._bulk_insert_alone(table, rows)

    def _bulk_insert_alone(self, table: sa.Table, rows: Iterator[tuple[int, int, bytes]]) -> None:
        self.engine.dispose()
        raw: Any = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA journal_mode=TRUNCATE")
            sql = f'INSERT INTO "{table.name}" (idx, version, blob) VALUES (?, ?, ?)'
            while (first := next(rows, None)) is not None:
                # executemany consumes the iterator: one transaction per 64 Ki rows,
                # never more than one row in memory.
                cur.execute("BEGIN IMMEDIATE")
                cur.executemany(sql, itertools.chain([first], itertools.islice(rows, 65535)))
                cur.execute("COMMIT")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()
        finally:
            raw.close()

    def load_meta(self, tree_id: str) -> bytes | None:
        mt = self.meta_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(mt.c.meta).where(mt.c.tree_id == tree_id)).first()
        return None if row is None else bytes(row[0])

    @contextmanager
    def transaction(self, tree_id: str) -> Iterator[TreeTransaction]:
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # SQLite's BEGIN IMMEDIATE is the writer lock there.
                    conn.execute(_PG_TREE_LOCK, {"name": f"otrace-oram:{tree_id}"})
                else:
                    # Back to the default when the connection returns to the pool.
                    conn.exec_driver_sql(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
                yield _SqlTreeTransaction(self, conn, tree_id)
        except (sa.exc.SQLAlchemyError, self._driver_error) as exc:
            raise StorageError(f"ORAM tree {tree_id!r}: storage transaction failed: {exc}") from exc
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def drop_tree(self, tree_id: str) -> None:
        self.bucket_table(tree_id).drop(self.engine, checkfirst=True)
        with self.engine.begin() as conn:
            for table in (self.state_table, self.meta_table, self.aux_table):
                conn.execute(table.delete().where(table.c.tree_id == tree_id))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.engine.dispose()


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    if synchronous not in {"OFF", "NORMAL", "FULL"}:
        raise StorageError(
            f"SQLite synchronous mode must be OFF, NORMAL or FULL, not {synchronous!r}"
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level, so `begin` below controls transactions.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA page_size=16384")  # only effective on a new file
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=10000")
        # The store's own thread copies most pages (`WalCheckpointer`); the writer's
        # checkpoint copies the rest and restarts the log.
        cur.execute(f"PRAGMA wal_autocheckpoint={WRITER_PAGES}")
        cur.close()

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn: Any, _record: Any) -> None:
        if dbapi_conn is None:  # invalidated
            return
        try:
            dbapi_conn.execute(f"PRAGMA cache_size=-{_DEFAULT_CACHE_KIB}")
        except sqlite3.Error:
            pass  # a broken connection is discarded by the pool; its error is reported there

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: a second writer waits instead of failing
        # half-way through a read-modify-write of the tree.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
