"""One otrace node: embedded KMS, the collector enclave, OTLP receivers and metrics.

    Node(settings).start()   # returns once every listener is up
    node.stop()

The embedded KMS runs in the node's own process on a loopback port and trusts
the local operator: on start it makes sure its policy releases the node
secrets to *this build's* measurement (replacing the rule for an older build),
signed with an owner key kept in the platform directory.

A replica (`settings.replica`) attests to an external `otrace kms serve`
instead, where measurements are approved explicitly, runs the replica
enclave (`collector._replica_app`), joins the cluster once its listeners are
up, and relays query sessions to the term's leader (`QueryServer(route=...)`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from collector._enclave_app import NODE_SECRETS, EnclaveConfig
from collector._group_commit import GroupCommitter
from collector._grpc_receiver import GrpcReceiver, TlsFiles
from collector._http_receiver import HttpReceiver
from collector._metrics import MetricsServer
from otrace.errors import ConfigError, OTraceError, UnavailableError
from otrace.settings import Settings
from query import AnalystCredential, QueryServer
from tee import (
    SECURITY_VERSION,
    AuditHook,
    Enclave,
    GrpcServer,
    Kms,
    KmsPolicy,
    Platform,
    PolicyRule,
    ProducerCa,
    load_or_create_owner_key,
    measure_code,
    serve_kms,
    sign_policy,
    trusted_package_roots,
)

__all__ = ["Node"]

log = logging.getLogger("otrace.node")
ENCLAVE_ENTRY = "collector._enclave_app:start"
REPLICA_ENTRY = "collector._replica_app:start"


class Node:
    """A single otrace node; see the module docstring."""

    def __init__(self, settings: Settings, *, audit: AuditHook | None = None) -> None:
        self.settings = settings
        self._audit = audit
        self._kms_server: GrpcServer | None = None
        self.kms_target = ""
        self.kms_key = b""
        self.enclave: Enclave | None = None
        self.committer: GroupCommitter | None = None
        self.grpc: GrpcReceiver | None = None
        self.http: HttpReceiver | None = None
        self.metrics: MetricsServer | None = None
        self.query: QueryServer | None = None
        self.credential_path = settings.data_dir / "analyst.cred"

    def start(self) -> None:
        """Starts every part; if one fails, stops those already running and re-raises."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = _with_producer_ca(self.settings)
        # Read and check the TLS files before anything starts, so a bad file
        # fails fast with its own message and leaves nothing running.
        tls, ssl_context = _tls(s), _ssl_context(s)
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        platform = Platform.open(s.platform_dir)
        if s.replica:
            self.kms_target, self.kms_key = s.kms, bytes.fromhex(s.kms_key)
        else:
            kms = _embedded_kms(platform, s.platform_dir)
            self._kms_server = serve_kms(kms, "127.0.0.1:0")
            self.kms_target, self.kms_key = f"127.0.0.1:{self._kms_server.port}", kms.public_key
        # Three enclave threads: ingest, queries and stats never wait behind each other.
        self.enclave = Enclave(
            REPLICA_ENTRY if s.replica else ENCLAVE_ENTRY,
            self._enclave_config().to_bytes(),
            audit=self._audit,
            timeout=600.0,
            threads=3,
        )
        self.enclave.start()
        route = self._route if s.replica else None
        self.query = QueryServer(self.enclave.call, s.query, route=route)
        self._write_credential(self.query.port)
        self.committer = GroupCommitter(
            self.enclave.call,
            max_pending=s.max_pending_requests,
            max_journal_depth=s.max_journal_depth,
        )
        self.grpc = GrpcReceiver(
            self.committer,
            s.otlp_grpc,
            max_request_bytes=s.max_request_bytes,
            token=s.auth_token,
            tls=tls,
        )
        self.grpc.start()
        self.http = HttpReceiver(
            self.committer,
            s.otlp_http,
            max_request_bytes=s.max_request_bytes,
            token=s.auth_token,
            ssl_context=ssl_context,
        )
        self.http.start()
        if s.metrics:
            self.metrics = MetricsServer(s.metrics, self.committer, self.enclave.call)
        if s.replica:
            self._join_cluster()
        log.info("otrace node up: OTLP/gRPC :%s, OTLP/HTTP :%s", self.grpc.port, self.http.port)

    def _join_cluster(self) -> None:
        """Registers and announces this replica, then its enclave starts electing."""
        assert self.enclave is not None and self.query is not None and self.grpc is not None
        host = self.settings.advertise or self.settings.query.rpartition(":")[0] or "127.0.0.1"
        if host in {"0.0.0.0", "::", "[::]"}:
            host = "127.0.0.1"
        endpoints = {"query": f"{host}:{self.query.port}", "otlp": self.grpc.address}
        self.enclave.call("cluster_join", cbor2.dumps(endpoints))
        log.info("replica %s joined the cluster", self.settings.replica)

    def _route(self) -> str | None:
        """The leader's query API when another replica leads (asked per query session)."""
        if self.enclave is None:
            return None
        try:
            forward = cbor2.loads(self.enclave.call("cluster_route"))["forward"]
        except OTraceError:
            return None
        return None if forward is None else str(forward)

    def _enclave_config(self) -> EnclaveConfig:
        s = self.settings
        return EnclaveConfig(
            store_url=s.store_url,
            journal_path="" if s.store else str(s.data_dir / "journal.sqlite"),
            platform_dir=str(s.platform_dir),
            kms_target=self.kms_target,
            kms_key=self.kms_key,
            storage=s.storage,
            blocks=s.oram_blocks,
            block_size=s.block_size,
            batch=s.oram_batch,
            cache_levels=s.cache_levels,
            build_workers=s.build_workers,
            epoch_ms=s.epoch_ms,
            retention_s=s.retention,
            trace_reads=s.trace_reads,
            search_reads=s.search_reads,
            unindexed=s.unindexed_keys,
            replica=s.replica,
            replica_key_path=str(s.data_dir / "replica.key") if s.replica else "",
            lease_ms=s.lease_ms,
            election_ms=s.election_ms,
        )

    def _write_credential(self, port: int) -> None:
        """Writes the analyst credential on first start (and after an upgrade changed the
        measurement or the endpoint), so `otrace search` works out of the box."""
        assert self.enclave is not None
        fields = cbor2.loads(self.enclave.call("issue_credential", self.settings.analyst.encode()))
        host = self.settings.query.rpartition(":")[0] or "127.0.0.1"
        wanted = AnalystCredential(
            str(fields["name"]),
            bytes(fields["index_key"]),
            bytes(fields["auth_key"]),
            bytes(fields["platform_key"]),
            (bytes(fields["measurement"]),),
            f"{host}:{port}",
        )
        try:
            current = AnalystCredential.load(self.credential_path)
        except ConfigError:
            current = None
        if current != wanted:
            wanted.save(self.credential_path)
            log.info("analyst credential written to %s", self.credential_path)

    def flush(self) -> int:
        """Drains the journal into the ORAM now; returns the epochs run."""
        return int(cbor2.loads(self._running().call("flush")))

    def scan(self) -> bytes:
        """Every stored span as serialized OTLP TracesData (reads the whole ORAM)."""
        return self._running().call("scan")

    def stats(self) -> dict[str, object]:
        """The enclave's counters: journal depth, spans stored, epochs, ORAM accesses."""
        return dict(cbor2.loads(self._running().call("stats")))

    def _running(self) -> Enclave:
        if self.enclave is None:
            raise UnavailableError("the node is not started")
        return self.enclave

    def stop(self) -> None:
        """Stops listeners first, then lets queued Exports finish, then the enclave."""
        grpc_rx, http_rx, metrics, query = self.grpc, self.http, self.metrics, self.query
        self.grpc = self.http = self.metrics = self.query = None
        for receiver in (grpc_rx, http_rx, metrics, query):
            if receiver is not None:
                receiver.stop()
        if self.committer is not None:
            self.committer.close()
            self.committer = None
        if self.enclave is not None:
            self.enclave.close()
            self.enclave = None
        if self._kms_server is not None:
            self._kms_server.stop()
            self._kms_server = None


def _embedded_kms(platform: Platform, platform_dir: Path) -> Kms:
    tee_root = [r for r in trusted_package_roots() if r.name == "tee"]
    kms = Kms(
        platform_dir / "kms", platform, platform.identity(measure_code(tee_root), SECURITY_VERSION)
    )
    owner = load_or_create_owner_key(platform_dir / "kms-owner.key")
    owner_public = owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    measurement = measure_code()
    current = kms.policy()
    parsed = current.parsed() if current is not None else None
    wanted = PolicyRule(secrets=NODE_SECRETS, measurement=measurement)
    if parsed is not None and wanted in parsed.rules:
        return kms
    # Rules for node secrets (an older build, or an older set of secrets) are replaced.
    others = tuple(
        r for r in (parsed.rules if parsed else ()) if not set(r.secrets) <= set(NODE_SECRETS)
    )
    policy = KmsPolicy(
        rules=(*others, wanted),
        trusted_platform_keys=(platform.attestation_public_key,),
        owners=parsed.owners if parsed else (owner_public,),
        predecessor=parsed.digest if parsed else None,
        allow_simulated=True,
    )
    kms.set_policy(sign_policy(policy, owner))
    log.info("embedded KMS now releases node secrets to measurement %s", measurement.hex()[:16])
    return kms


def _with_producer_ca(s: Settings) -> Settings:
    """With require_attested_producers, the platform's producer CA is the client CA."""
    if not s.require_attested_producers:
        return s
    path = ProducerCa.certificate_file(Platform.open(s.platform_dir))
    # The flag is now spelled out as the client CA (Settings refuses both at once).
    return dataclasses.replace(s, tls_client_ca=str(path), require_attested_producers=False)


def _tls(s: Settings) -> TlsFiles | None:
    if not s.tls_cert:
        return None
    try:
        client_ca = _read(s.tls_client_ca) if s.tls_client_ca else None
        return TlsFiles(_read(s.tls_cert), _read(s.tls_key), client_ca)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS files: {exc}") from None


def _ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The OTLP/HTTP receiver's TLS; loading it also checks that key and certificate match."""
    if not s.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(_path(s.tls_cert), _path(s.tls_key), password=_no_password)
        if s.tls_client_ca:
            # Only this CA: no system roots, which would admit any public CA's clients.
            context.load_verify_locations(cafile=_path(s.tls_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"unusable TLS files (tls_cert, tls_key, tls_client_ca): {exc}") from None
    return context


def _no_password() -> bytes:
    raise ConfigError("the TLS key (tls_key) is encrypted: give an unencrypted PEM key")


def _read(path: str) -> bytes:
    return _path(path).read_bytes()


def _path(path: str) -> Path:
    return Path(os.path.expanduser(path))
