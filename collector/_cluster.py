"""What replicas publish about themselves in the shared store, and `otrace cluster status`.

Tables (next to the election's, in the ORAM's database):

    cluster_members  name -> query endpoint, OTLP endpoint, joined_at, seen_at
                     (each replica refreshes seen_at every election tick)
    cluster_commits  term -> leader, first and last ORAM commit number, commits;
                     written by the fencing hook inside every ORAM commit

Everything here is untrusted like the rest of the database: a member's
endpoint is only where a follower relays an end-to-end attested query
session to, so a false one costs availability, never confidentiality. The
commit log is what lets anyone check after the fact that terms never
interleave: every commit of term t precedes every commit of term t + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from collector._election import election_tables
from otrace.errors import ConfigError, StorageError

__all__ = [
    "ClusterStatus",
    "MemberInfo",
    "TermCommits",
    "announce",
    "cluster_status",
    "cluster_tables",
    "members",
    "record_commit",
]

_METADATA = sa.MetaData()
_NAME = sa.String(64)
_MEMBERS = sa.Table(
    "cluster_members",
    _METADATA,
    sa.Column("name", _NAME, primary_key=True),
    sa.Column("query_endpoint", sa.String(256), nullable=False),
    sa.Column("otlp_endpoint", sa.String(256), nullable=False),
    sa.Column("joined_at", sa.Float, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
)
_COMMITS = sa.Table(
    "cluster_commits",
    _METADATA,
    sa.Column("term", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("leader", _NAME, nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("commits", sa.BigInteger, nullable=False),
)
_ELECTION = election_tables(sa.MetaData())
_TREE = "spans"  # the collector's tree id (collector._enclave_app.TREE_ID)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One replica as it announced itself (and whether it registered an election key)."""

    name: str
    query_endpoint: str
    otlp_endpoint: str
    seen_at: float
    registered: bool


@dataclass(frozen=True, slots=True)
class TermCommits:
    """The ORAM commits made under one term (the fencing hook writes these)."""

    term: int
    leader: str
    first_seq: int
    last_seq: int
    commits: int


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What `otrace cluster status` prints; `leader` is None until the term is claimed."""

    term: int
    leader: str | None
    lease_expires_at: float
    heartbeat_at: float | None
    shuffled: bool
    journal_depth: int
    oram_seq: int | None  # the ORAM's newest commit number; None until a leader created it
    replicas: tuple[MemberInfo, ...]
    terms: tuple[TermCommits, ...]

    def lease_left(self, now: float) -> float:
        return self.lease_expires_at - now

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "term": self.term,
            "leader": self.leader,
            "lease_expires_at": self.lease_expires_at,
            "lease_left_s": round(self.lease_left(now), 3),
            "heartbeat_at": self.heartbeat_at,
            "phase": _phase(self),
            "journal_depth": self.journal_depth,
            "oram_commits": self.oram_seq,
            "replicas": [
                {
                    "name": m.name,
                    "query": m.query_endpoint,
                    "otlp": m.otlp_endpoint,
                    "seen_s_ago": round(now - m.seen_at, 3),
                    "registered": m.registered,
                }
                for m in self.replicas
            ],
            "terms": [
                {
                    "term": t.term,
                    "leader": t.leader,
                    "first_seq": t.first_seq,
                    "last_seq": t.last_seq,
                    "commits": t.commits,
                }
                for t in self.terms
            ],
        }


def cluster_tables(engine: Engine) -> None:
    """Creates the cluster tables if they are missing."""
    try:
        _METADATA.create_all(engine)
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot create the cluster tables: {exc}") from exc


def announce(engine: Engine, name: str, query: str, otlp: str, *, now: float) -> None:
    """Inserts or refreshes this replica's row (endpoints and seen_at)."""
    m = _MEMBERS
    try:
        with engine.begin() as conn:
            values = {"query_endpoint": query, "otlp_endpoint": otlp, "seen_at": now}
            if conn.execute(m.update().where(m.c.name == name).values(**values)).rowcount == 0:
                conn.execute(m.insert(), {"name": name, "joined_at": now, **values})
    except sa.exc.IntegrityError:
        pass  # raced with our own previous incarnation's insert: the next tick updates
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot announce replica {name!r}: {exc}") from exc


def members(engine: Engine) -> dict[str, MemberInfo]:
    """Every announced replica by name."""
    try:
        with engine.connect() as conn:
            return _members(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot read the cluster members: {exc}") from exc


def record_commit(conn: Connection, term: int, leader: str, seq: int) -> None:
    """Counts ORAM commit `seq` under `term`, in the commit's own transaction."""
    c = _COMMITS
    updated = conn.execute(
        c.update()
        .where(c.c.term == term)
        .values(last_seq=seq, commits=c.c.commits + 1, leader=leader)
    )
    if updated.rowcount == 0:
        conn.execute(
            c.insert(),
            {"term": term, "leader": leader, "first_seq": seq, "last_seq": seq, "commits": 1},
        )


def cluster_status(url_or_engine: str | Engine) -> ClusterStatus:
    """Reads the cluster's shared state (nothing is created or written)."""
    engine = sa.create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("election_lease"):
                raise ConfigError(
                    "no otrace cluster in this store (no election tables): start replicas with "
                    "`otrace serve --replica NAME --store URL --kms HOST:PORT` first"
                )
            return _status(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot read the cluster state: {exc}") from exc
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def _status(conn: Connection) -> ClusterStatus:
    lease, terms = _ELECTION["lease"], _ELECTION["terms"]
    row = conn.execute(
        sa.select(
            lease.c.term, lease.c.leader, lease.c.expires_at, lease.c.heartbeat_at, terms.c.shuffle
        )
        .select_from(lease.outerjoin(terms, terms.c.term == lease.c.term))
        .where(lease.c.id == 1)
    ).first()
    if row is None:
        raise StorageError("the election lease row is missing")
    inspector = sa.inspect(conn)
    depth = 0
    if inspector.has_table("ingest_journal"):
        depth = int(conn.execute(sa.text("SELECT count(*) FROM ingest_journal")).scalar_one())
    oram_seq = None
    if inspector.has_table("oram_meta"):
        created = conn.execute(
            sa.text("SELECT count(*) FROM oram_meta WHERE tree_id = :t"), {"t": _TREE}
        ).scalar_one()
        if created:
            oram_seq = int(
                conn.execute(
                    sa.text("SELECT coalesce(max(seq), 0) FROM oram_state WHERE tree_id = :t"),
                    {"t": _TREE},
                ).scalar_one()
            )
    commits: tuple[TermCommits, ...] = ()
    if inspector.has_table("cluster_commits"):
        c = _COMMITS
        rows = conn.execute(sa.select(c).order_by(c.c.term.desc()).limit(10))
        commits = tuple(TermCommits(*r) for r in rows)
    return ClusterStatus(
        term=int(row[0]),
        leader=row[1],  # set only by a verified claim
        lease_expires_at=float(row[2]),
        heartbeat_at=None if row[3] is None else float(row[3]),
        shuffled=row[4] is not None,
        journal_depth=depth,
        oram_seq=oram_seq,
        replicas=tuple(_members(conn).values()) if inspector.has_table("cluster_members") else (),
        terms=commits,
    )


def _members(conn: Connection) -> dict[str, MemberInfo]:
    registered = {name for (name,) in conn.execute(sa.select(_ELECTION["replicas"].c.name))}
    m = _MEMBERS
    rows = conn.execute(
        sa.select(m.c.name, m.c.query_endpoint, m.c.otlp_endpoint, m.c.seen_at).order_by(m.c.name)
    )
    return {
        name: MemberInfo(name, query, otlp, float(seen), name in registered)
        for name, query, otlp, seen in rows
    }


def _phase(status: ClusterStatus) -> str:
    if status.term == 0:
        return "no term yet"
    if status.leader is not None:
        return "led"
    return "shuffled, awaiting claim" if status.shuffled else "collecting trackers"
