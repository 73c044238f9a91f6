"""A replica's enclave side: the election every tick, and the ORAM writer while it leads.

Runs inside the collector enclave process of `otrace serve --replica NAME`.
Every replica appends Exports to the shared journal (`journal_requests`); this
module decides which one drains it:

    tick (every lease/10)  announce seen_at; read the lease
      lease lapsed         open the next term (`ElectionStore.open_term`)
      term open            submit a fresh tracker; once every live replica has
                           one in (or the tracker window passed), shuffle them in
                           this enclave and publish (the first publish wins)
      term shuffled        re-verify the draw from the store; if the slot is
                           ours (k*R' == S'), claim it with the DLEQ proof
    leading                open the ORAM and the sealed ingest state, run an
                           `EpochThread` whose every commit is fenced by the term,
                           heartbeat every lease/3 on its own thread

A `FencingError` from a heartbeat or a commit ends the leadership at once (the
epoch thread stops, queries are refused); the replica goes back to following.
The replica's election secret never leaves this process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from collector._cluster import announce, members, record_commit
from collector._election import ElectionStore, LeaseState
from collector._epochs import EpochThread
from collector._ingest import IngestEngine
from oram_store import TransactionHook, TreeTransaction
from otrace.errors import ElectionError, FencingError, OTraceError, UnavailableError
from query import IndexState
from tee.ssle import ReplicaKey, Shuffler

__all__ = ["LeaderSource", "ReplicaRuntime", "ReplicaTiming"]

log = logging.getLogger("otrace.replica")
Clock = Callable[[], float]
OpenEngine = Callable[[TransactionHook], IngestEngine]
_OPENING_WAIT_S = 30.0  # a query that arrives while the new leader reopens the ORAM waits


@dataclass(frozen=True, slots=True)
class ReplicaTiming:
    """Lease and election timeouts (seconds) and the epoch period of a leader."""

    lease_s: float = 5.0
    election_s: float = 5.0
    epoch_s: float = 0.2

    @property
    def tick_s(self) -> float:
        return self.lease_s / 10

    @property
    def tracker_window_s(self) -> float:
        """How long a term waits for trackers of replicas that are not seen alive."""
        return self.election_s / 3


@dataclass(slots=True)
class _Leadership:
    term: int
    stopped: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)  # engine open, or stopped
    engine: IngestEngine | None = None
    epochs: EpochThread | None = None


class ReplicaRuntime:
    """Election loop and leadership of one replica (see the module docstring)."""

    def __init__(
        self,
        key: ReplicaKey,
        election: ElectionStore,
        shuffler: Shuffler,
        open_engine: OpenEngine,
        *,
        db: Engine,
        timing: ReplicaTiming,
        clock: Clock = time.time,
    ) -> None:
        self.key = key
        self.name = key.name
        self._election = election
        self._shuffler = shuffler
        self._open_engine = open_engine
        self._db = db
        self._timing = timing
        self._clock = clock
        self._lock = threading.Lock()
        self._leading: _Leadership | None = None
        self._endpoints = ("", "")
        self._tracker_term = 0
        self._claim_term = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otrace-election", daemon=True)
        self.view: LeaseState | None = None
        self.leader_query: str | None = None
        self.terms_led = 0
        self.last_error = ""

    def __repr__(self) -> str:
        return f"ReplicaRuntime(name={self.name!r}, leading={self.leading_term})"

    # ------------------------------------------------------------------ control

    def join(self, query_endpoint: str, otlp_endpoint: str) -> None:
        """Registers K (once per name, ever), announces the endpoints, starts the loop."""
        try:
            self._election.register(self.name, self.key.public_key)
        except ElectionError:
            if self._election.replicas().get(self.name) != self.key.public_key:
                raise
        self._endpoints = (query_endpoint, otlp_endpoint)
        announce(self._db, self.name, query_endpoint, otlp_endpoint, now=self._clock())
        if not self._thread.is_alive():
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._step_down("the replica is stopping")

    @property
    def leading_term(self) -> int | None:
        lead = self._leading
        return None if lead is None or lead.engine is None else lead.term

    @property
    def engine(self) -> IngestEngine | None:
        """The writer's engine while this replica leads and has opened the ORAM."""
        lead = self._leading
        return None if lead is None else lead.engine

    def writer(self, wait_s: float) -> IngestEngine | None:
        """The engine, waiting up to `wait_s` while a just-won term is still opening it."""
        lead = self._leading
        if lead is None:
            return None
        lead.ready.wait(wait_s)
        return lead.engine

    @property
    def epochs(self) -> EpochThread | None:
        lead = self._leading
        return None if lead is None else lead.epochs

    def route(self) -> str | None:
        """Where a query session should be relayed: the leader's query API, or None (here)."""
        if self._leading is not None:
            return None
        if self.leader_query is None:  # not seen yet (just joined, or mid-election): ask now
            try:
                self._observe(self._election.status())
            except OTraceError:
                pass
        return self.leader_query

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.wait(self._timing.tick_s):
            try:
                self.tick()
                self.last_error = ""
            except OTraceError as exc:
                if str(exc) != self.last_error:
                    log.warning("election tick of %s failed: %s", self.name, exc)
                self.last_error = str(exc)
            except Exception as exc:  # keep the loop alive; never log foreign messages
                self.last_error = type(exc).__name__
                log.error("election tick of %s failed: %s", self.name, self.last_error)

    def tick(self) -> None:
        """One round of the loop (public for tests that drive it by hand)."""
        now = self._clock()
        announce(self._db, self.name, *self._endpoints, now=now)
        lease = self._election.status()
        lead = self._leading
        if lead is not None and (lease.term != lead.term or lease.leader != self.name):
            self._step_down(f"the store is at term {lease.term}, led by {lease.leader}")
        if self._leading is None:
            if lease.lapsed(now):
                self._election.open_term()
                lease = self._election.status()
            if lease.leader is None and not lease.lapsed(now):
                lease = self._campaign(lease, now)
        self._observe(lease)

    def _campaign(self, lease: LeaseState, now: float) -> LeaseState:
        term = lease.term
        if self._tracker_term != term:
            self._tracker_term = term
            try:
                self._election.submit_tracker(self.key.tracker_for(term))
            except ElectionError as exc:
                log.info("%s sits term %d out: %s", self.name, term, exc)
        if not lease.shuffled and self._ready_to_shuffle(lease, now):
            published = self._shuffler.shuffle(term, self._election.trackers(term))
            try:
                self._election.publish_shuffle(published)
            except ElectionError:
                pass  # another replica's shuffle of this term was published first
            lease = self._election.status()
        if lease.shuffled and lease.term == term and self._claim_term != term:
            draw = self._election.draw(term)  # re-verified from the store's rows
            self._claim_term = term  # one look per term (a failed read is tried again)
            if self.key.recognises(draw.tracker):
                self._election.claim(self.key.claim(draw))
                self._promote(term)
                lease = self._election.status()
        return lease

    def _ready_to_shuffle(self, lease: LeaseState, now: float) -> bool:
        trackers = self._election.trackers(lease.term)
        if not trackers:
            return False
        opened_at = lease.expires_at - self._timing.election_s
        if now - opened_at >= self._timing.tracker_window_s:
            return True
        alive = [
            m
            for m in members(self._db).values()
            if m.registered and now - m.seen_at < self._timing.lease_s / 2
        ]
        return len(trackers) >= len(alive)

    def _observe(self, lease: LeaseState) -> None:
        self.view = lease
        if lease.leader is None or lease.leader == self.name:
            self.leader_query = None
            return
        member = members(self._db).get(lease.leader)
        self.leader_query = None if member is None else member.query_endpoint

    # ------------------------------------------------------------ leadership

    def _promote(self, term: int) -> None:
        lead = _Leadership(term)
        with self._lock:
            self._leading = lead
        log.info("%s leads term %d", self.name, term)
        threading.Thread(
            target=self._heartbeats, args=(lead,), name="otrace-heartbeat", daemon=True
        ).start()
        check = self._election.fence(term, self.name)

        def fence(txn: TreeTransaction, seq: int) -> None:
            check(txn, seq)  # FencingError unless this replica holds the live lease of `term`
            record_commit(txn.connection, term, self.name, seq)  # type: ignore[attr-defined]

        # The previous leader's commits are in storage: reopen, unseal, resume from
        # the watermark (or continue its half-written epoch) exactly as after a crash.
        try:
            engine = self._open_engine(fence)
        except BaseException:
            self._step_down("could not open the ORAM", lead)  # let the lease lapse
            raise
        epochs = EpochThread(
            engine, self._timing.epoch_s, on_fenced=lambda exc: self._step_down(str(exc), lead)
        )
        with self._lock:
            if lead.stopped.is_set():
                return
            lead.engine, lead.epochs = engine, epochs
            lead.ready.set()
        self.terms_led += 1
        epochs.start()

    def _heartbeats(self, lead: _Leadership) -> None:
        while not lead.stopped.wait(self._timing.lease_s / 3):
            try:
                self._election.heartbeat(lead.term, self.name)
            except FencingError as exc:
                self._step_down(str(exc), lead)
            except OTraceError as exc:
                # Commits stay fenced by the lease expiry whatever happens here.
                log.warning("heartbeat of term %d failed, retrying: %s", lead.term, exc)

    def _step_down(self, why: str, lead: _Leadership | None = None) -> None:
        with self._lock:
            current = self._leading
            if current is None or (lead is not None and current is not lead):
                return
            self._leading = None
            current.stopped.set()
            current.ready.set()
            if current.epochs is not None:
                current.epochs.stop()
        log.warning("%s stops leading term %d: %s", self.name, current.term, why)


class LeaderSource:
    """The query executor's `BlockSource` on a replica: the leader's engine, or a refusal."""

    def __init__(self, runtime: ReplicaRuntime) -> None:
        self._runtime = runtime

    def _engine(self) -> IngestEngine:
        engine = self._runtime.writer(wait_s=_OPENING_WAIT_S)
        if engine is None:
            raise UnavailableError(
                f"replica {self._runtime.name!r} does not lead the current term; "
                "send queries to any replica's query API, which relays them to the leader"
            )
        return engine

    @property
    def lock(self) -> AbstractContextManager[object]:
        return self._engine().lock

    @property
    def index(self) -> IndexState:
        return self._engine().index

    def live_from(self) -> int:
        return self._engine().live_from()

    def read_blocks(self, wanted: Sequence[int], batches: int, width: int) -> dict[int, bytes]:
        return self._engine().read_blocks(wanted, batches, width)
