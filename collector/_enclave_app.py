"""The collector enclave: its ecall table and its epoch thread.

`start(init)` runs inside the enclave process (see `tee.Enclave`). It attests
to the KMS to obtain the node's keys, opens the block device (Path ORAM or the
encrypted baseline) and the journal, starts the epoch thread and returns the
only calls the host can make:

    ingest  [[content type, body], ...] -> {"outcomes": [[ok, accepted, rejected, msg]], "depth": n}
    flush   b""                         -> epochs run (drains the journal now)
    scan    b""                         -> TracesData bytes of every stored span
    stats   b""                         -> {"journal_depth", "spans", "epochs", ...}
    query_open   {"nonce"}                         -> {"session", "quote", "public_key"}
    query_call   {"session", "record", "public_key"} -> sealed reply record
    query_close  {"session"}                       -> b""
    issue_credential  analyst name (UTF-8)         -> analyst credential fields (CBOR)

The query ecalls carry attested-channel records the host cannot read (see
`query._session`). `issue_credential` trusts the host the way the embedded
KMS already does (SECURITY.md).
"""

from __future__ import annotations

import hashlib
import multiprocessing.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import Engine

from collector._builder import ProcessBuilder
from collector._epochs import EpochThread
from collector._ingest import BlockDevice, IngestEngine
from collector._journal import Journal
from oram_store import DEFAULT_BLOCK_SIZE, DirectBlockStore, OramParams, PathOram, SqlBucketStore
from otrace.errors import ConfigError, InvalidRequest
from query import EdbCodec, EdbRow, EdbTable, Indexer, QueryBudget, QueryExecutor, QuerySessions
from tee import (
    SECURITY_VERSION,
    EnclaveIdentity,
    KmsClient,
    MonotonicCounter,
    Platform,
    Sealer,
    measure_code,
)
from tee._enclave import EcallTable

__all__ = [
    "NODE_SECRETS",
    "EnclaveConfig",
    "attest",
    "derive",
    "edb_reader",
    "make_indexer",
    "node_counter",
    "open_device",
    "query_ecalls",
    "start",
]

NODE_SECRETS = ("oram_key", "state_key", "index_key")
TREE_ID = "spans"


@dataclass(frozen=True, slots=True)
class EnclaveConfig:
    """What the host tells the enclave at start (no secrets: those come from the KMS)."""

    store_url: str
    journal_path: str  # SQLite file for the journal; empty: the store itself
    platform_dir: str
    kms_target: str
    kms_key: bytes
    storage: str = "oram"
    blocks: int = 1 << 16
    block_size: int = 0  # 0: DEFAULT_BLOCK_SIZE for a new tree, any for an existing one
    batch: int = 32
    cache_levels: int = 8
    build_workers: int = 2
    epoch_ms: int = 200
    retention_s: int = 7 * 86400
    trace_reads: int = 16
    search_reads: int = 64
    # Replica mode (`collector._replica_app`): name, sealed election key file, timeouts.
    replica: str = ""
    replica_key_path: str = ""
    lease_ms: int = 5000
    election_ms: int = 5000
    unindexed: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return cbor2.dumps({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def from_bytes(cls, raw: bytes) -> EnclaveConfig:
        return cls(**cbor2.loads(raw))


# The enclave process's thread switch interval (Python's default is 5 ms). Epochs ran
# long Python loops (keywords, index segments) there; an ingest ecall, which
# acknowledges Exports, waited up to the interval for the GIL each time it was handed
# back. At 1 ms `otrace bench ingest --spans 100000` measured Export p99 360 and 360 ms
# against 530, 578 and 652 ms at the default, throughput unchanged within the noise.
# A node now builds epochs in its builder process (`collector._builder`); the setting
# still serves replicas, which build inline, and the node's ORAM batches and queries.
SWITCH_INTERVAL_S = 0.001


def prioritise_ecalls() -> None:
    """Called first by every enclave entry point of the collector (see SWITCH_INTERVAL_S)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def start(init: bytes) -> EcallTable:
    """Enclave entry point: attest, open storage, start epochs, return the ecalls."""
    prioritise_ecalls()
    config = EnclaveConfig.from_bytes(init)
    platform, identity, secrets = attest(config)
    sealer = Sealer.from_key(secrets["state_key"])
    counter = node_counter(platform, config)
    device = open_device(config, secrets["oram_key"], sealer, counter)
    journal_key = derive(secrets["state_key"], b"otrace/journal")
    # The journal's own counter: its sealed head can be rolled back apart from the ORAM.
    where = config.journal_path or config.store_url
    journal_counter = MonotonicCounter(
        platform, "journal-" + hashlib.sha256(where.encode()).hexdigest()[:24]
    )
    journal = (
        Journal.sqlite(config.journal_path, journal_key, counter=journal_counter)
        if config.journal_path
        else Journal(device.store.engine, journal_key, counter=journal_counter)  # type: ignore[attr-defined]
    )
    indexer = make_indexer(config, secrets)
    unindexed = frozenset(config.unindexed)
    builder = ProcessBuilder(
        secrets["index_key"],
        edb_value_key(secrets),
        device.params.block_size,
        unindexed,
        workers=config.build_workers,
    )
    engine = IngestEngine(
        device, journal, sealer, indexer=indexer, unindexed=unindexed, builder=builder
    )
    budget = QueryBudget.from_reads(
        config.trace_reads, config.search_reads, device.params.batch_size
    )
    executor = QueryExecutor(engine, _edb_reader(engine), indexer, budget=budget)
    sessions = QuerySessions(
        platform, identity, executor, derive(secrets["state_key"], b"otrace/analyst-auth")
    )
    epochs = EpochThread(engine, config.epoch_ms / 1000)
    epochs.start()
    # As the enclave process exits, epochs stop (the one in progress finishes) before the
    # builder does (its finalizer has priority 100); an epoch still running would find
    # the builder gone and log a failure. The host waits 5 s before terminating.
    multiprocessing.util.Finalize(None, epochs.stop, args=(3.0,), exitpriority=110)
    return {
        **_ecalls(engine, epochs),
        **query_ecalls(sessions, secrets["index_key"], identity.measurement, platform),
    }


def attest(config: EnclaveConfig) -> tuple[Platform, EnclaveIdentity, dict[str, bytes]]:
    """This build's identity on the platform, and the node secrets the KMS releases to it."""
    platform = Platform.open(Path(config.platform_dir))
    identity = platform.identity(measure_code(), SECURITY_VERSION)
    with KmsClient.connect(config.kms_target, kms_key=config.kms_key) as kms:
        secrets = kms.obtain_secrets(platform, identity, NODE_SECRETS)
    return platform, identity, secrets


def node_counter(platform: Platform, config: EnclaveConfig) -> MonotonicCounter:
    """The ORAM's rollback counter: one per store on this platform."""
    name = "node-" + hashlib.sha256(config.store_url.encode()).hexdigest()[:24]
    return MonotonicCounter(platform, name)


def make_indexer(config: EnclaveConfig, secrets: dict[str, bytes]) -> Indexer:
    return Indexer(
        secrets["index_key"],
        EdbCodec(edb_value_key(secrets)),
        retention_ns=config.retention_s * 10**9,
    )


def edb_value_key(secrets: dict[str, bytes]) -> bytes:
    """The key EDB buckets are encrypted under (the enclave's own, not the analysts')."""
    return derive(secrets["state_key"], b"otrace/edb-value")


def edb_reader(edb: EdbTable, db: Engine) -> Any:
    def lookup(slots: Any) -> list[EdbRow]:
        with db.connect() as conn:
            return edb.lookup(conn, slots)

    return lookup


def _edb_reader(engine: IngestEngine) -> Any:
    return edb_reader(engine.edb, engine.device.store.engine)  # type: ignore[attr-defined]


def derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def open_device(
    config: EnclaveConfig,
    key: bytes,
    sealer: Sealer,
    counter: MonotonicCounter,
    *,
    store: SqlBucketStore | None = None,
) -> BlockDevice:
    """Opens the tree, or creates it on first start; refuses changed geometry. An unset
    block size (0) is DEFAULT_BLOCK_SIZE for a new tree and the tree's own otherwise, so
    a store made before the default changed (4096 B) still opens."""
    store = store or SqlBucketStore(config.store_url)
    kind: Any = PathOram if config.storage == "oram" else DirectBlockStore
    extra = {"cache_levels": config.cache_levels} if config.storage == "oram" else {}
    if store.load_meta(TREE_ID) is None:
        size = config.block_size or DEFAULT_BLOCK_SIZE
        params = OramParams(TREE_ID, blocks=config.blocks, block_size=size, batch_size=config.batch)
        device = kind.create(store, params, key=key, sealer=sealer, counter=counter, **extra)
    else:
        device = kind.open(store, TREE_ID, key=key, sealer=sealer, counter=counter, **extra)
    held = device.params
    wanted = config.block_size or held.block_size
    if (held.blocks, held.block_size) != (config.blocks, wanted):
        raise ConfigError(
            f"the store holds {held.blocks} blocks of {held.block_size} B, "
            f"but {config.blocks} of {wanted} B were asked for: "
            "keep the settings the data directory was created with"
        )
    return device  # type: ignore[no-any-return]


def _ecalls(engine: IngestEngine, epochs: EpochThread) -> EcallTable:
    def ingest(payload: bytes) -> bytes:
        items = [(str(ct), bytes(body)) for ct, body in cbor2.loads(payload)]
        outcomes = engine.ingest(items)
        if engine.journal_depth() >= 8:
            epochs.wake.set()
        rows = [[o.ok, o.accepted, o.rejected, o.message] for o in outcomes]
        return cbor2.dumps({"outcomes": rows, "depth": engine.journal_depth()})

    def flush(_: bytes) -> bytes:
        return cbor2.dumps(engine.drain_all())

    def scan(_: bytes) -> bytes:
        return bytes(engine.scan().SerializeToString())

    def stats(_: bytes) -> bytes:
        seconds, epochs.epoch_seconds = epochs.epoch_seconds, []
        # Only what the storage sees anyway: batch counts, not real-access counts,
        # and never the stash occupancy (SECURITY.md: the host is untrusted too).
        return cbor2.dumps(
            {
                "journal_depth": engine.journal_depth(),
                "spans": engine.state.spans,
                "epochs": engine.state.epochs,
                "epoch_seconds": seconds,
                "oram_batches": engine.device.seq,
                "last_error": epochs.last_error,
            }
        )

    return {"ingest": ingest, "flush": flush, "scan": scan, "stats": stats}


def query_ecalls(
    sessions: QuerySessions, index_key: bytes, measurement: bytes, platform: Platform
) -> EcallTable:
    def query_open(payload: bytes) -> bytes:
        nonce = cbor2.loads(payload).get("nonce")
        if not isinstance(nonce, bytes):
            raise InvalidRequest("a query session starts with a nonce")
        sid, quote, public_key = sessions.open(nonce)
        return cbor2.dumps({"session": sid, "quote": quote, "public_key": public_key})

    def query_call(payload: bytes) -> bytes:
        frame = cbor2.loads(payload)
        public_key = frame.get("public_key")
        return sessions.call(
            int(frame["session"]),
            bytes(frame["record"]),
            None if public_key is None else bytes(public_key),
        )

    def query_close(payload: bytes) -> bytes:
        sessions.close(int(cbor2.loads(payload)["session"]))
        return b""

    def issue_credential(payload: bytes) -> bytes:
        name = payload.decode()
        if not name or len(name) > 128:
            raise InvalidRequest("an analyst name is 1 to 128 characters")
        return cbor2.dumps(
            {
                "name": name,
                "index_key": index_key,
                "auth_key": sessions.credential_key(name),
                "platform_key": platform.attestation_public_key,
                "measurement": measurement,
            }
        )

    return {
        "query_open": query_open,
        "query_call": query_call,
        "query_close": query_close,
        "issue_credential": issue_credential,
    }
