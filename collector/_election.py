"""Election state in the shared SQL store, and the fencing check every ORAM commit runs.

Tables (SQLAlchemy Core, SQLite and PostgreSQL), next to the ORAM's own:

    election_replicas  name -> K_i (both unique)
    election_terms     term -> seed, published shuffle, slot, claim, leader
    election_trackers  (term, replica) -> tracker, proof; R unique across all terms
    election_lease     the single row id=1: current term, leader (once claimed),
                       lease expiry, last heartbeat

A term's life: `open_term` (only once the previous lease lapsed) -> every replica
`submit_tracker` -> `publish_shuffle` (quote and inputs checked) -> the owner
`claim`s (proof checked before anything is written; one claim per term) ->
`heartbeat` renews the lease -> it lapses -> `open_term` again.

Every operation starts by locking the lease row (FOR UPDATE on PostgreSQL; on
SQLite `BEGIN IMMEDIATE` already serialises writers), and `check_fence` takes
it in share mode inside the ORAM commit transaction, so a term change and an
ORAM commit are ordered one way or the other, never interleaved.

The store is untrusted like the rest of the database: whatever is read back
(`draw`) is verified again. The lease is a liveness and split-brain guard
between honest replicas; it rests on the replicas' clocks (`clock`, wall time
shared across processes) agreeing to within a small fraction of the lease.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from oram_store import SqlBucketStore, TransactionHook, TreeTransaction
from otrace.errors import ElectionError, FencingError, StorageError
from tee import Verifier
from tee._encoding import encode_canonical
from tee.ssle import (
    Claim,
    Draw,
    PublishedShuffle,
    Tracker,
    TrackerSubmission,
    check_registration,
    verify_claim,
    verify_shuffle,
    verify_submission,
)

__all__ = ["ElectionStore", "LeaseState", "check_fence", "election_tables"]

Clock = Callable[[], float]
_GENESIS_SEED = hashlib.sha512(b"otrace/ssle/v1/genesis").digest()
_CHAIN_LABEL = b"otrace/ssle/v1/term-chain\x00"


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The lease row: `leader` is None until the term is claimed."""

    term: int
    leader: str | None
    expires_at: float
    heartbeat_at: float | None
    shuffled: bool

    def lapsed(self, now: float) -> bool:
        return now > self.expires_at


def election_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """The election tables, added to `metadata`."""
    name = sa.String(64)
    term = sa.BigInteger().with_variant(sa.Integer, "sqlite")
    return {
        "replicas": sa.Table(
            "election_replicas",
            metadata,
            sa.Column("name", name, primary_key=True),
            sa.Column("public_key", sa.LargeBinary(32), nullable=False, unique=True),
        ),
        "terms": sa.Table(
            "election_terms",
            metadata,
            sa.Column("term", term, primary_key=True, autoincrement=False),
            sa.Column("seed", sa.LargeBinary, nullable=False),
            sa.Column("shuffle", sa.LargeBinary),
            sa.Column("slot", sa.Integer),
            sa.Column("claim", sa.LargeBinary),
            sa.Column("leader", name),
        ),
        "trackers": sa.Table(
            "election_trackers",
            metadata,
            sa.Column("term", term, primary_key=True, autoincrement=False),
            sa.Column("replica", name, primary_key=True),
            sa.Column("r", sa.LargeBinary(32), nullable=False, unique=True),
            sa.Column("tracker", sa.LargeBinary(64), nullable=False),
            sa.Column("proof", sa.LargeBinary(64), nullable=False),
        ),
        "lease": sa.Table(
            "election_lease",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("term", term, nullable=False),
            sa.Column("leader", name),
            sa.Column("leader_key", sa.LargeBinary(32)),
            sa.Column("expires_at", sa.Float, nullable=False),
            sa.Column("heartbeat_at", sa.Float),
        ),
    }


_METADATA = sa.MetaData()
_T = election_tables(_METADATA)
_LEASE = _T["lease"]


class ElectionStore:
    """The election's shared state over the ORAM's `SqlBucketStore` (same database)."""

    def __init__(
        self,
        store: SqlBucketStore,
        *,
        verifier: Verifier,
        lease_seconds: float = 5.0,
        election_seconds: float = 5.0,
        clock: Clock = time.time,
    ) -> None:
        if lease_seconds <= 0 or election_seconds <= 0:
            raise ElectionError("lease and election timeouts must be positive")
        self._engine = store.engine
        self._verifier = verifier
        self._lease_seconds = lease_seconds
        self._election_seconds = election_seconds
        self._clock = clock
        try:
            _METADATA.create_all(self._engine)
            with self._engine.begin() as conn:
                if conn.execute(sa.select(_LEASE.c.id)).first() is None:
                    conn.execute(_LEASE.insert(), {"id": 1, "term": 0, "expires_at": 0.0})
        except sa.exc.IntegrityError:
            pass  # another replica created the lease row first
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot create the election tables: {exc}") from exc

    # ------------------------------------------------------------ registration

    def register(self, name: str, public_key: bytes) -> None:
        """Register replica `name` with K_i; a taken name or key is refused."""
        check_registration(name, public_key)
        replicas = _T["replicas"]
        with self._transaction() as conn:
            taken = conn.execute(
                sa.select(replicas.c.name).where(
                    (replicas.c.name == name) | (replicas.c.public_key == public_key)
                )
            ).first()
            if taken is not None:
                raise ElectionError(
                    f"replica {name!r} is already registered"
                    if taken[0] == name
                    else f"this public key is already registered by {taken[0]!r}"
                )
            conn.execute(replicas.insert(), {"name": name, "public_key": public_key})

    def replicas(self) -> dict[str, bytes]:
        """Every registered replica: name -> K_i."""
        replicas = _T["replicas"]
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(replicas.c.name, replicas.c.public_key))
            return {name: bytes(key) for name, key in rows}

    # ------------------------------------------------------------------- terms

    def status(self) -> LeaseState:
        """The lease row as stored now."""
        with self._engine.connect() as conn:
            return _lease(conn, lock=None)

    def open_term(self, *, seed: bytes | None = None) -> int:
        """Start the next term if the current lease lapsed; return the current term either way.

        `seed` feeds the beacon: the previous term's signed state root. Without
        one, the digest of the previous term's record (seed, shuffle, claim) is
        used. It is fixed here, before any tracker of the new term is shuffled.
        """
        if seed is not None and not 16 <= len(seed) <= 64:
            raise ElectionError("a beacon seed is 16 to 64 bytes")
        with self._transaction() as conn:
            lease = _lease(conn, lock="update")
            now = self._clock()
            if not lease.lapsed(now):
                return lease.term
            term = lease.term + 1
            chosen = seed if seed is not None else _chain_seed(conn, lease.term)
            conn.execute(_T["terms"].insert(), {"term": term, "seed": chosen})
            conn.execute(
                _LEASE.update()
                .where(_LEASE.c.id == 1)
                .values(
                    term=term,
                    leader=None,
                    leader_key=None,
                    expires_at=now + self._election_seconds,
                    heartbeat_at=None,
                )
            )
            return term

    def submit_tracker(self, submission: TrackerSubmission) -> None:
        """Accept a replica's tracker for the open term (proof checked; one per replica)."""
        trackers = _T["trackers"]
        with self._transaction() as conn:
            lease = _lease(conn, lock="update")
            if submission.term != lease.term or lease.shuffled:
                raise ElectionError(
                    f"term {submission.term} is not open for trackers "
                    f"(current term {lease.term}, {'shuffled' if lease.shuffled else 'open'})"
                )
            key = _key_of(conn, submission.replica)
            verify_submission(submission, key, lease.term)
            reused = conn.execute(
                sa.select(trackers.c.term, trackers.c.replica).where(
                    ((trackers.c.term == lease.term) & (trackers.c.replica == submission.replica))
                    | (trackers.c.r == submission.tracker.r)
                )
            ).first()
            if reused is not None:
                raise ElectionError(
                    f"{submission.replica!r} already submitted a tracker for term {lease.term}"
                    if reused[1] == submission.replica and reused[0] == lease.term
                    else "this tracker was submitted before: a tracker must be fresh"
                )
            conn.execute(
                trackers.insert(),
                {
                    "term": lease.term,
                    "replica": submission.replica,
                    "r": submission.tracker.r,
                    "tracker": submission.tracker.to_bytes(),
                    "proof": submission.proof,
                },
            )

    def trackers(self, term: int) -> tuple[Tracker, ...]:
        """The term's input list: its trackers in replica-name order."""
        with self._engine.connect() as conn:
            return tuple(sub.tracker for sub in _submissions(conn, term))

    def publish_shuffle(self, published: PublishedShuffle) -> Draw:
        """Store the term's attested shuffle (once) and return what the beacon selects."""
        terms = _T["terms"]
        with self._transaction() as conn:
            lease = _lease(conn, lock="update")
            if published.term != lease.term or lease.shuffled:
                raise ElectionError(
                    f"cannot publish a shuffle for term {published.term}: the current term is "
                    f"{lease.term}{' and it is already shuffled' if lease.shuffled else ''}"
                )
            if lease.lapsed(self._clock()):
                raise ElectionError(f"term {lease.term} lapsed before its shuffle was published")
            inputs = tuple(sub.tracker for sub in _submissions(conn, lease.term))
            verify_shuffle(published, term=lease.term, inputs=inputs, verifier=self._verifier)
            draw = published.draw(_seed(conn, lease.term))
            conn.execute(
                terms.update()
                .where(terms.c.term == lease.term)
                .values(shuffle=published.to_bytes(), slot=draw.slot)
            )
            return draw

    def draw(self, term: int) -> Draw:
        """The term's slot and tracker, re-verified from what the store holds."""
        with self._engine.connect() as conn:
            return self._verified_draw(conn, term)

    def claim(self, claim: Claim) -> LeaseState:
        """Verify `claim`, then make its replica the term's leader; one claim per term."""
        terms = _T["terms"]
        with self._transaction() as conn:
            lease = _lease(conn, lock="update")
            now = self._clock()
            if claim.term != lease.term:
                raise ElectionError(
                    f"claim is for term {claim.term}; the current term is {lease.term}"
                )
            if lease.leader is not None:
                raise ElectionError(f"term {lease.term} is already claimed")
            if lease.lapsed(now):
                raise ElectionError(f"term {lease.term} lapsed before it was claimed")
            key = _key_of(conn, claim.replica)
            verify_claim(claim, self._verified_draw(conn, lease.term), key)
            conn.execute(
                terms.update()
                .where(terms.c.term == lease.term)
                .values(claim=claim.to_bytes(), leader=claim.replica)
            )
            conn.execute(
                _LEASE.update()
                .where(_LEASE.c.id == 1)
                .values(
                    leader=claim.replica,
                    leader_key=key,
                    expires_at=now + self._lease_seconds,
                    heartbeat_at=now,
                )
            )
            return _lease(conn, lock=None)

    def heartbeat(self, term: int, leader: str) -> LeaseState:
        """Renew the leader's lease; `FencingError` if it is no longer the live leader."""
        with self._transaction() as conn:
            now = self._clock()
            lease = _lease(conn, lock="update")
            _fence(lease, term, leader, now)
            conn.execute(
                _LEASE.update()
                .where(_LEASE.c.id == 1)
                .values(expires_at=now + self._lease_seconds, heartbeat_at=now)
            )
            return _lease(conn, lock=None)

    def fence(self, term: int, leader: str) -> TransactionHook:
        """A `PathOram.access_batch(in_transaction=...)` hook that runs `check_fence`."""

        def hook(txn: TreeTransaction, _seq: int) -> None:
            conn = getattr(txn, "connection", None)
            if not isinstance(conn, Connection):
                raise StorageError("the fencing check needs a SQL tree transaction")
            check_fence(conn, term, leader, now=self._clock())

        return hook

    # ---------------------------------------------------------------- internal

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError as exc:
            raise ElectionError(
                f"the election store refused a duplicate: {exc.orig.__class__.__name__}"
            ) from None
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"election store transaction failed: {exc}") from exc

    def _verified_draw(self, conn: Connection, term: int) -> Draw:
        terms = _T["terms"]
        row = conn.execute(sa.select(terms.c.shuffle).where(terms.c.term == term)).first()
        if row is None or row[0] is None:
            raise ElectionError(f"term {term} has no published shuffle")
        published = PublishedShuffle.from_bytes(bytes(row[0]))
        table = _T["replicas"]
        replicas = {
            name: bytes(key)
            for name, key in conn.execute(sa.select(table.c.name, table.c.public_key))
        }
        submissions = _submissions(conn, term)
        for sub in submissions:
            if sub.replica not in replicas:
                raise ElectionError(f"term {term} holds a tracker of unregistered {sub.replica!r}")
            verify_submission(sub, replicas[sub.replica], term)
        inputs = tuple(sub.tracker for sub in submissions)
        verify_shuffle(published, term=term, inputs=inputs, verifier=self._verifier)
        return published.draw(_seed(conn, term))


def check_fence(conn: Connection, term: int, leader: str, *, now: float) -> None:
    """Raise `FencingError` unless `leader` holds the live lease of `term`, read on `conn`.

    Run it inside the writer's commit transaction: the lease row is read in
    share mode there, so no term change can commit between this check and the
    commit it guards.
    """
    try:
        lease = _lease(conn, lock="share")
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot read the election lease: {exc}") from exc
    _fence(lease, term, leader, now)


def _fence(lease: LeaseState, term: int, leader: str, now: float) -> None:
    if lease.term != term:
        raise FencingError(
            f"stale term: this writer leads term {term} but the store is at term {lease.term}"
        )
    if lease.leader != leader:
        holder = "nobody" if lease.leader is None else repr(lease.leader)
        raise FencingError(f"term {term} is led by {holder}, not {leader!r}")
    if lease.lapsed(now):
        raise FencingError(
            f"the lease of term {term} lapsed {now - lease.expires_at:.3f}s ago; renew it first"
        )


def _lease(conn: Connection, *, lock: str | None) -> LeaseState:
    terms = _T["terms"]
    query: sa.Select[Any] = (
        sa.select(
            _LEASE.c.term,
            _LEASE.c.leader,
            _LEASE.c.expires_at,
            _LEASE.c.heartbeat_at,
            terms.c.shuffle.is_not(None),
        )
        .select_from(_LEASE.outerjoin(terms, terms.c.term == _LEASE.c.term))
        .where(_LEASE.c.id == 1)
    )
    if lock is not None:
        query = query.with_for_update(read=lock == "share", of=_LEASE)
    row = conn.execute(query).first()
    if row is None:
        raise StorageError("the election lease row is missing")
    term, leader, expires_at, heartbeat_at, shuffled = row
    return LeaseState(int(term), leader, float(expires_at), heartbeat_at, bool(shuffled))


def _key_of(conn: Connection, name: str) -> bytes:
    replicas = _T["replicas"]
    row = conn.execute(sa.select(replicas.c.public_key).where(replicas.c.name == name)).first()
    if row is None:
        raise ElectionError(f"replica {name!r} is not registered")
    return bytes(row[0])


def _submissions(conn: Connection, term: int) -> list[TrackerSubmission]:
    t = _T["trackers"]
    rows = conn.execute(
        sa.select(t.c.replica, t.c.tracker, t.c.proof).where(t.c.term == term).order_by(t.c.replica)
    )
    return [
        TrackerSubmission(term, replica, Tracker.from_bytes(bytes(tracker)), bytes(proof))
        for replica, tracker, proof in rows
    ]


def _seed(conn: Connection, term: int) -> bytes:
    terms = _T["terms"]
    row = conn.execute(sa.select(terms.c.seed).where(terms.c.term == term)).first()
    if row is None:
        raise ElectionError(f"term {term} was never opened")
    return bytes(row[0])


def _chain_seed(conn: Connection, previous: int) -> bytes:
    if previous == 0:
        return _GENESIS_SEED
    terms = _T["terms"]
    row = conn.execute(
        sa.select(terms.c.seed, terms.c.shuffle, terms.c.claim).where(terms.c.term == previous)
    ).first()
    if row is None:
        raise StorageError(f"the record of term {previous} is missing")
    seed, shuffle, claim = (b"" if v is None else bytes(v) for v in row)
    return hashlib.sha512(
        _CHAIN_LABEL + encode_canonical([previous, seed, shuffle, claim])
    ).digest()
