"""The collector enclave of a replica (`otrace serve --replica NAME`): its entry and ecalls.

Like the single-node enclave (`collector._enclave_app`) it attests to the KMS,
here an external `otrace kms serve`, for the shared node secrets; unlike it,
it opens no ORAM at start. Every replica journals Exports into the shared
journal; the election (`collector._replica.ReplicaRuntime`) decides which one
opens the ORAM and drains it this term. The SSLE shuffle runs in this same
enclave (the `Shuffler` with this build's identity), so no extra process is
needed: every replica can shuffle, and the first attested shuffle of a term
published wins.

Ecalls (the single node's, plus two for the host's cluster wiring):

    ingest, flush, scan, stats              as on a single node; flush and scan
                                            only do work on the leader
    query_open, query_call, query_close,    attested analyst sessions; queries are
    issue_credential                        answered only while this replica leads
    cluster_join   {"query", "otlp"}        register, announce, start the election
    cluster_route  b""                      {"forward": leader's query API or None}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cbor2
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from collector._cluster import cluster_tables
from collector._election import ElectionStore
from collector._enclave_app import (
    TREE_ID,
    EnclaveConfig,
    attest,
    derive,
    edb_reader,
    make_indexer,
    node_counter,
    open_device,
    prioritise_ecalls,
    query_ecalls,
)
from collector._ingest import IngestEngine
from collector._intake import journal_requests
from collector._journal import Journal
from collector._otlp import Limits
from collector._replica import LeaderSource, ReplicaRuntime, ReplicaTiming
from oram_store import SqlBucketStore, TransactionHook
from otrace.errors import ConfigError, IntegrityError, StorageError, UnavailableError
from query import EdbTable, QueryBudget, QueryExecutor, QuerySessions
from tee import (
    EnclaveIdentity,
    Platform,
    Sealer,
    Verifier,
    read_private_file,
    write_private_file,
)
from tee._enclave import EcallTable
from tee.ssle import ReplicaKey, Shuffler

__all__ = ["start"]

_KEY_CONTEXT = b"otrace/ssle/replica-key\x00"
_SCHEMA_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtext('otrace-cluster-schema'))")


def start(init: bytes) -> EcallTable:
    """Enclave entry point of a replica: attest, open the shared store, return the ecalls."""
    prioritise_ecalls()
    config = EnclaveConfig.from_bytes(init)
    if not config.replica:
        raise ConfigError("a replica enclave needs a replica name")
    platform, identity, secrets = attest(config)
    sealer = Sealer.from_key(secrets["state_key"])
    with _schema_lock(config.store_url):
        store, journal, election, edb = _open_shared(config, platform, identity, secrets)
    indexer = make_indexer(config, secrets)
    counter = node_counter(platform, config)

    def open_engine(fence: TransactionHook) -> IngestEngine:
        device = open_device(config, secrets["oram_key"], sealer, counter, store=store)
        if device.params.batch_size != config.batch:
            raise ConfigError(
                f"the shared ORAM has batches of {device.params.batch_size}, this replica was "
                f"started with {config.batch}: give every replica the same settings"
            )
        return IngestEngine(
            device,
            journal,
            sealer,
            indexer=indexer,
            unindexed=frozenset(config.unindexed),
            fence=fence,
        )

    runtime = ReplicaRuntime(
        _replica_key(config, sealer),
        election,
        Shuffler(platform, identity),
        open_engine,
        db=store.engine,
        timing=ReplicaTiming(
            config.lease_ms / 1000, config.election_ms / 1000, config.epoch_ms / 1000
        ),
    )
    budget = QueryBudget.from_reads(config.trace_reads, config.search_reads, config.batch)
    executor = QueryExecutor(
        LeaderSource(runtime), edb_reader(edb, store.engine), indexer, budget=budget
    )
    sessions = QuerySessions(
        platform, identity, executor, derive(secrets["state_key"], b"otrace/analyst-auth")
    )
    return {
        **_ecalls(runtime, journal),
        **query_ecalls(sessions, secrets["index_key"], identity.measurement, platform),
    }


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Serialises table creation: replicas starting together would race CREATE TABLE."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(_SCHEMA_LOCK)
            yield
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot lock the shared store for setup: {exc}") from exc
    finally:
        engine.dispose()


def _open_shared(
    config: EnclaveConfig,
    platform: Platform,
    identity: EnclaveIdentity,
    secrets: dict[str, bytes],
) -> tuple[SqlBucketStore, Journal, ElectionStore, EdbTable]:
    store = SqlBucketStore(_replica_engine(config))
    journal = Journal(store.engine, derive(secrets["state_key"], b"otrace/journal"))
    # Shuffles are accepted from this build on this platform (SECURITY.md: one platform).
    verifier = Verifier(
        trusted_platform_keys=[platform.attestation_public_key],
        allowed_measurements=[identity.measurement],
        allow_simulated=True,
    )
    election = ElectionStore(
        store,
        verifier=verifier,
        lease_seconds=config.lease_ms / 1000,
        election_seconds=config.election_ms / 1000,
    )
    cluster_tables(store.engine)
    return store, journal, election, EdbTable(store.engine, TREE_ID)


def _replica_engine(config: EnclaveConfig) -> Engine:
    """The shared store's engine, with a bound on how long a stalled writer holds locks.

    A leader frozen inside an ORAM commit (a VM pause, SIGSTOP) holds the lease
    row in share mode and the tree's lock; the election could not open the next
    term until it woke. PostgreSQL ends any session idle inside a transaction
    for lease/2, which rolls that commit back and frees the locks; a writer
    never pauses that long between the statements of a healthy commit.
    """
    engine = sa.create_engine(config.store_url, pool_pre_ping=True)
    timeout_ms = max(100, config.lease_ms // 2)

    @event.listens_for(engine, "connect")
    def _bound_stalls(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"SET idle_in_transaction_session_timeout = {timeout_ms}")
        cursor.close()
        dbapi_conn.commit()

    return engine


def _replica_key(config: EnclaveConfig, sealer: Sealer) -> ReplicaKey:
    """This replica's election key: generated once, sealed under the cluster's state key."""
    path = Path(config.replica_key_path)
    context = _KEY_CONTEXT + config.replica.encode()
    sealed = read_private_file(path)
    if sealed is not None:
        try:
            return ReplicaKey.from_secret(config.replica, sealer.unseal(sealed, context))
        except IntegrityError:
            raise IntegrityError(
                f"the election key in {path} is not replica {config.replica!r}'s "
                "(another name, another cluster, or tampered)"
            ) from None
    key = ReplicaKey.generate(config.replica)
    write_private_file(path, sealer.seal(key.secret, context))
    return key


def _ecalls(runtime: ReplicaRuntime, journal: Journal) -> EcallTable:
    limits = Limits()

    def ingest(payload: bytes) -> bytes:
        items = [(str(ct), bytes(body)) for ct, body in cbor2.loads(payload)]
        outcomes = journal_requests(journal, items, limits)
        depth = journal.pending()
        epochs = runtime.epochs
        if epochs is not None and depth >= 8:
            epochs.wake.set()
        rows = [[o.ok, o.accepted, o.rejected, o.message] for o in outcomes]
        return cbor2.dumps({"outcomes": rows, "depth": depth})

    def flush(_: bytes) -> bytes:
        engine = runtime.engine
        return cbor2.dumps(0 if engine is None else engine.drain_all())

    def scan(_: bytes) -> bytes:
        engine = runtime.engine
        if engine is None:
            raise UnavailableError(f"replica {runtime.name!r} does not lead: scan the leader")
        return bytes(engine.scan().SerializeToString())

    def stats(_: bytes) -> bytes:
        view, engine, epochs = runtime.view, runtime.engine, runtime.epochs
        seconds: list[float] = []
        if epochs is not None:
            seconds, epochs.epoch_seconds = epochs.epoch_seconds, []
        return cbor2.dumps(
            {
                "replica": runtime.name,
                "term": 0 if view is None else view.term,
                "leader": None if view is None else view.leader,
                "leading": runtime.leading_term is not None,
                "terms_led": runtime.terms_led,
                "journal_depth": journal.pending(),
                "spans": 0 if engine is None else engine.state.spans,
                "epochs": 0 if engine is None else engine.state.epochs,
                "epoch_seconds": seconds,
                "oram_batches": 0 if engine is None else engine.device.seq,
                "last_error": (epochs.last_error if epochs else "") or runtime.last_error,
            }
        )

    def cluster_join(payload: bytes) -> bytes:
        endpoints = cbor2.loads(payload)
        runtime.join(str(endpoints["query"]), str(endpoints["otlp"]))
        return b""

    def cluster_route(_: bytes) -> bytes:
        return cbor2.dumps({"forward": runtime.route()})

    return {
        "ingest": ingest,
        "flush": flush,
        "scan": scan,
        "stats": stats,
        "cluster_join": cluster_join,
        "cluster_route": cluster_route,
    }
