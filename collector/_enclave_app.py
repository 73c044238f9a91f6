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
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from collector._ingest import BlockDevice, IngestEngine
from collector._journal import Journal
from oram_store import DirectBlockStore, OramParams, PathOram, SqlBucketStore
from otrace.errors import ConfigError, InvalidRequest, OTraceError
from query import EdbCodec, EdbRow, Indexer, QueryBudget, QueryExecutor, QuerySessions
from tee import (
    SECURITY_VERSION,
    KmsClient,
    MonotonicCounter,
    Platform,
    Sealer,
    measure_code,
)
from tee._enclave import EcallTable

__all__ = ["NODE_SECRETS", "EnclaveConfig", "start"]

NODE_SECRETS = ("oram_key", "state_key", "index_key")
TREE_ID = "spans"
_MAINTENANCE_S = 10.0
log = logging.getLogger("otrace.enclave")


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
    block_size: int = 4096
    batch: int = 32
    cache_levels: int = 8
    epoch_ms: int = 200
    retention_s: int = 7 * 86400
    trace_reads: int = 16
    search_reads: int = 64

    def to_bytes(self) -> bytes:
        return cbor2.dumps({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def from_bytes(cls, raw: bytes) -> EnclaveConfig:
        return cls(**cbor2.loads(raw))


def start(init: bytes) -> EcallTable:
    """Enclave entry point: attest, open storage, start epochs, return the ecalls."""
    config = EnclaveConfig.from_bytes(init)
    platform = Platform.open(Path(config.platform_dir))
    identity = platform.identity(measure_code(), SECURITY_VERSION)
    with KmsClient.connect(config.kms_target, kms_key=config.kms_key) as kms:
        secrets = kms.obtain_secrets(platform, identity, NODE_SECRETS)
    sealer = Sealer.from_key(secrets["state_key"])
    counter_name = "node-" + hashlib.sha256(config.store_url.encode()).hexdigest()[:24]
    counter = MonotonicCounter(platform, counter_name)
    device = _open_device(config, secrets["oram_key"], sealer, counter)
    journal_key = _derive(secrets["state_key"], b"otrace/journal")
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
    indexer = Indexer(
        secrets["index_key"],
        EdbCodec(_derive(secrets["state_key"], b"otrace/edb-value")),
        retention_ns=config.retention_s * 10**9,
    )
    engine = IngestEngine(device, journal, sealer, indexer=indexer)
    budget = QueryBudget.from_reads(
        config.trace_reads, config.search_reads, device.params.batch_size
    )
    executor = QueryExecutor(engine, engine.edb, _edb_reader(engine), indexer, budget=budget)
    sessions = QuerySessions(
        platform, identity, executor, _derive(secrets["state_key"], b"otrace/analyst-auth")
    )
    epochs = _EpochThread(engine, config.epoch_ms / 1000)
    epochs.start()
    return {
        **_ecalls(engine, epochs),
        **_query_ecalls(sessions, secrets["index_key"], identity.measurement, platform),
    }


def _edb_reader(engine: IngestEngine) -> Any:
    db = engine.device.store.engine  # type: ignore[attr-defined]

    def lookup(labels: Any) -> list[EdbRow]:
        with db.connect() as conn:
            return engine.edb.lookup(conn, labels)

    return lookup


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def _open_device(
    config: EnclaveConfig, key: bytes, sealer: Sealer, counter: MonotonicCounter
) -> BlockDevice:
    store = SqlBucketStore(config.store_url)
    kind: Any = PathOram if config.storage == "oram" else DirectBlockStore
    extra = {"cache_levels": config.cache_levels} if config.storage == "oram" else {}
    if store.load_meta(TREE_ID) is None:
        params = OramParams(
            TREE_ID, blocks=config.blocks, block_size=config.block_size, batch_size=config.batch
        )
        device = kind.create(store, params, key=key, sealer=sealer, counter=counter, **extra)
    else:
        device = kind.open(store, TREE_ID, key=key, sealer=sealer, counter=counter, **extra)
    if (device.params.blocks, device.params.block_size) != (config.blocks, config.block_size):
        raise ConfigError(
            f"the store holds {device.params.blocks} blocks of {device.params.block_size} B, "
            f"but {config.blocks} of {config.block_size} B were asked for: "
            "keep the settings the data directory was created with"
        )
    return device  # type: ignore[no-any-return]


class _EpochThread(threading.Thread):
    """Drains the journal every epoch; wakes early when ingest has filled a batch."""

    def __init__(self, engine: IngestEngine, period: float) -> None:
        super().__init__(name="otrace-epochs", daemon=True)
        self.engine = engine
        self.period = period
        self.wake = threading.Event()
        self.last_error = ""
        self.epoch_seconds: list[float] = []

    def run(self) -> None:
        last_maintenance = time.monotonic()
        while True:
            self.wake.wait(self.period)
            self.wake.clear()
            try:
                while (report := self.engine.drain_once()) is not None:
                    self.epoch_seconds.append(report.seconds)
                # Epochs maintain the index after each write; an idle node still has to
                # drop segments as they pass the retention.
                if time.monotonic() - last_maintenance > _MAINTENANCE_S:
                    self.engine.maintain()
                    last_maintenance = time.monotonic()
                self.last_error = ""
            except Exception as exc:
                # The journal still holds the spans: retry later. Only otrace's own
                # messages are kept; another exception's text might hold enclave data.
                self.last_error = str(exc) if isinstance(exc, OTraceError) else type(exc).__name__
                log.error("epoch failed, will retry: %s", self.last_error)
                time.sleep(min(5.0, self.period * 5))


def _ecalls(engine: IngestEngine, epochs: _EpochThread) -> EcallTable:
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


def _query_ecalls(
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
