"""Real cluster processes for tests: one `otrace kms serve`, N `otrace serve --replica`.

Everything runs on one emulated platform (one platform directory: the KMS
trusts its attestation key), each replica with its own data directory and
process group, all on one PostgreSQL schema.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from collector import ClusterStatus, cluster_status
from tee import (
    SECURITY_VERSION,
    KmsClient,
    KmsPolicy,
    Platform,
    PolicyRule,
    load_or_create_owner_key,
    measure_code,
    sign_policy,
)

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("OTRACE_TEST_POSTGRES_URL")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema; the URL selects it for every connection."""
    assert POSTGRES_URL is not None
    schema = f"otrace_cluster_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class Replica:
    name: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def credential(self) -> Path:
        return self.data_dir / "analyst.cred"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)  # host and enclave together


@dataclass
class Cluster:
    base: Path
    url: str
    lease_s: float
    kms_target: str = ""
    kms_key: str = ""
    kms: subprocess.Popen[str] | None = None
    replicas: dict[str, Replica] = field(default_factory=dict)

    @property
    def platform_dir(self) -> Path:
        return self.base / "platform"

    def start_kms(self) -> None:
        Platform.open(self.platform_dir)
        command = [sys.executable, "-m", "otrace", "kms", "serve", "--listen", "127.0.0.1:0",
                   "--state-dir", str(self.base / "kms-state"),
                   "--platform-dir", str(self.platform_dir)]  # fmt: skip
        self.kms = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.kms.stdout is not None
        words = self.kms.stdout.readline().split()
        assert words[:3] == ["KMS", "listening", "on"], words
        self.kms_target, self.kms_key = words[3], words[5]
        self._release_node_secrets()

    def _release_node_secrets(self) -> None:
        """The operator's step: a policy releasing the node secrets to this build."""
        platform = Platform.open(self.platform_dir)
        owner = load_or_create_owner_key(self.base / "owner.key")
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        owner_public = owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        measurement = platform.identity(measure_code(), SECURITY_VERSION).measurement
        policy = KmsPolicy(
            rules=(
                PolicyRule(secrets=("oram_key", "state_key", "index_key"), measurement=measurement),
            ),
            trusted_platform_keys=(platform.attestation_public_key,),
            owners=(owner_public,),
            predecessor=None,
            allow_simulated=True,
        )
        with KmsClient.connect(self.kms_target) as client:
            client.set_policy(sign_policy(policy, owner))

    def start_replica(self, name: str) -> Replica:
        """Starts replica `name` (again, after its previous process exited or was killed)."""
        previous = self.replicas.get(name)
        if previous is not None:
            previous.proc.wait(timeout=30)
        data_dir = self.base / name
        data_dir.mkdir(exist_ok=True)
        log = self.base / f"{name}.log"
        command = [sys.executable, "-m", "otrace", "serve", "--replica", name,
                   "--store", self.url, "--kms", self.kms_target, "--kms-key", self.kms_key,
                   "--data-dir", str(data_dir), "--platform-dir", str(self.platform_dir),
                   "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0",
                   "--query", "127.0.0.1:0", "--metrics", "", "--oram-blocks", "1024",
                   "--epoch", "100ms", "--lease", f"{self.lease_s}s",
                   "--election-timeout", f"{self.lease_s}s"]  # fmt: skip
        env = {**os.environ, "OTRACE_CACHE_LEVELS": "4"}
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                command, cwd=ROOT, stdout=sink, stderr=sink, start_new_session=True, env=env
            )
        replica = Replica(name, data_dir, log, proc)
        self.replicas[name] = replica
        return replica

    def wait_joined(self, names: list[str], timeout: float = 90.0) -> ClusterStatus:
        deadline = time.monotonic() + timeout
        while True:
            for name in names:
                proc = self.replicas[name].proc
                assert proc.poll() is None, f"{name} exited: {self.replicas[name].output()}"
            status = self.status()
            fresh = {m.name for m in status.replicas if time.time() - m.seen_at < self.lease_s}
            if set(names) <= fresh and all((self.replicas[n].credential).exists() for n in names):
                return status
            assert time.monotonic() < deadline, f"replicas did not join: {status}"
            time.sleep(0.2)

    def status(self) -> ClusterStatus:
        try:
            return cluster_status(self.url)
        except Exception:  # tables not created yet
            return ClusterStatus(0, None, 0.0, None, False, 0, None, (), ())

    def wait_leader(
        self, *, after_term: int = 0, timeout: float = 60.0, oram: bool = False
    ) -> ClusterStatus:
        """The first status with a claimed term after `after_term` (and, with `oram`, a
        created ORAM tree: the first leader writes it before it drains anything)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            ready = not oram or status.oram_seq is not None
            if status.term > after_term and status.leader is not None and ready:
                return status
            assert time.monotonic() < deadline, f"no leader after term {after_term}: {status}"
            time.sleep(0.05)

    def endpoints(self, name: str) -> tuple[str, str]:
        """(OTLP/gRPC, query API) of replica `name`, as it announced them."""
        member = next(m for m in self.status().replicas if m.name == name)
        return member.otlp_endpoint, member.query_endpoint

    def stop(self) -> None:
        for replica in self.replicas.values():
            if replica.proc.poll() is None:
                try:
                    replica.signal(signal.SIGCONT)
                    replica.signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
            replica.proc.wait(timeout=30)
        if self.kms is not None:
            self.kms.terminate()
            self.kms.wait(timeout=10)
            if self.kms.stdout is not None:
                self.kms.stdout.close()


def commits_by_term(url: str) -> list[tuple[int, str, int, int, int]]:
    """Every (term, leader, first_seq, last_seq, commits) row the fencing hook wrote."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT term, leader, first_seq, last_seq, commits FROM cluster_commits "
                    "ORDER BY term"
                )
            ).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]
    finally:
        engine.dispose()


def dump(cluster: Cluster) -> str:
    """Everything useful when a test fails."""
    parts = [json.dumps(cluster.status().to_json(time.time()), indent=1)]
    for replica in cluster.replicas.values():
        parts.append(f"---- {replica.name} ----\n{replica.output()[-4000:]}")
    return "\n".join(parts)
