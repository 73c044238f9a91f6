"""Disk full, a database locked by someone else, PostgreSQL connections killed: mid-ingest.

Each test runs a real node under loadtest load (OTel retry rules), opens a fault
window, and checks three things: what a client sees during the fault (a probe
Export: the code and message), that the node takes load again afterwards, and
that every acknowledged span reads back byte-identical through the query API.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from collector import Node
from collector._grpc_receiver import EXPORT
from otrace.loadtest import Endpoint, LoadConfig, RetryPolicy, TraceShape, run_load, verify_traces
from otrace.loadtest._retry import retry_info_delay
from tests.collector.otlp_helpers import request
from tests.conftest import POSTGRES_URL
from tests.reliability.conftest import node_settings, query_client

Fault = Callable[[], contextlib.AbstractContextManager[None]]


class _Probe(threading.Thread):
    """Starts one small Export every 0.1 s, without waiting for the previous one (a stalled
    node must not hold the probe back), and tallies the answers: code, RetryInfo, text."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.halt = threading.Event()
        self.answers: Counter[str] = Counter()
        self.messages: dict[str, str] = {}
        self._lock = threading.Lock()
        self.slowest_s = 0.0

    def run(self) -> None:
        body = request(2, "probe").SerializeToString()
        with (
            grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel,
            ThreadPoolExecutor(64) as pool,
        ):
            call = channel.unary_unary(EXPORT)
            while not self.halt.wait(0.1):
                pool.submit(self._one, call, body)

    def _one(self, call: grpc.UnaryUnaryMultiCallable, body: bytes) -> None:
        started = time.monotonic()
        try:
            call(body, timeout=30)
            key, text = "OK", ""
        except grpc.RpcError as err:
            retry = "+RetryInfo" if retry_info_delay(err.trailing_metadata()) else ""
            key, text = f"{err.code().name}{retry}", str(err.details())[:300]
        with self._lock:
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            self.answers[key] += 1
            self.messages.setdefault(key, text)


def _under_fault(
    node: Node, fault: Fault, *, before_s: float = 2.0, seconds: float = 10.0
) -> dict[str, object]:
    assert node.grpc is not None
    config = LoadConfig(
        Endpoint(f"127.0.0.1:{node.grpc.port}", timeout_s=30.0),
        rate=200,
        duration_s=seconds,
        workers=1,
        threads=4,
        spans_per_request=20,
        shape=TraceShape(6, 5, 4, 0.02),
        sample=None,
        retry=RetryPolicy(max_attempts=30, initial_backoff_s=0.2, max_backoff_s=1.0, budget_s=60),
    )
    loaded: list[object] = []
    loader = threading.Thread(target=lambda: loaded.append(run_load(config)))
    probe = _Probe(node.grpc.port)
    loader.start()
    time.sleep(before_s)
    probe.start()
    with fault():
        pass
    probe.halt.set()
    probe.join()
    loader.join()
    report = loaded[0]
    during = dict(probe.answers)
    node.flush()
    with query_client(node) as client:
        verified = verify_traces(client, report.sample, wait_s=30)  # type: ignore[attr-defined]
    t = report.tally  # type: ignore[attr-defined]
    figures = {
        "acked_spans": t.acked_spans,
        "failed_spans": dict(t.failed),
        "retries": dict(t.retries),
        "probe": during,
        "probe_messages": probe.messages,
        "probe_slowest_s": round(probe.slowest_s, 2),
        "verified_traces": verified.verified_traces,
        "lost_spans": verified.lost_spans,
        "corrupt_spans": verified.corrupt_spans,
    }
    print(json.dumps(figures))  # quoted in docs/RELIABILITY.md (pytest -s)
    for text in probe.messages.values():
        assert "[SQL:" not in text and "parameters" not in text, (
            f"a statement reached a client: {text}"
        )
    assert t.acked_spans > 0 and verified.checks
    assert verified.ok, verified.problems()
    return figures


# ---------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 MiB tmpfs (needs root; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # 15 s
def test_disk_full_mid_ingest(small_disk: Path, tmp_path: Path) -> None:
    settings = node_settings(tmp_path, data_dir=small_disk / "data", oram_blocks=1024, epoch_ms=100)
    filler = small_disk / "filler"

    @contextlib.contextmanager
    def disk_full() -> Iterator[None]:
        with filler.open("wb", buffering=0) as f:
            for chunk in (1 << 20, 4096):  # then the last few KiB
                with contextlib.suppress(OSError):
                    while True:
                        f.write(bytes(chunk))
        time.sleep(4.0)
        filler.unlink()
        yield

    node = Node(settings)
    node.start()
    try:
        figures = _under_fault(node, disk_full)
    finally:
        node.stop()
    refused = {k: v for k, v in figures["probe"].items() if k != "OK"}  # type: ignore[attr-defined]
    assert refused, f"the full disk was never noticed: {figures}"
    assert set(refused) <= {"UNAVAILABLE+RetryInfo"}, figures
    assert any("full" in m for m in figures["probe_messages"].values()), figures  # type: ignore[attr-defined]


# ---------------------------------------------------------- database locked


@pytest.mark.slow  # 22 s: it must outwait the 10 s busy timeout
def test_journal_locked_by_another_writer(tmp_path: Path) -> None:
    """An exclusive lock held past the journal's busy timeout (10 s): refused with a retry
    hint while it lasts, then taken up again."""
    settings = node_settings(tmp_path, epoch_ms=100)

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        conn = sqlite3.connect(
            settings.data_dir / "journal.sqlite", timeout=30, isolation_level=None
        )
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(11.0)
        conn.execute("ROLLBACK")
        conn.close()
        yield

    node = Node(settings)
    node.start()
    try:
        figures = _under_fault(node, locked, seconds=14.0)
    finally:
        node.stop()
    # Exports queue behind the blocked group commit (a stall as long as the lock); the
    # commit that outwaits the busy timeout answers UNAVAILABLE + RetryInfo and is retried.
    refused = {k: v for k, v in figures["probe"].items() if k != "OK"}  # type: ignore[attr-defined]
    assert set(refused) <= {"UNAVAILABLE+RetryInfo"}, figures
    assert figures["retries"].get("UNAVAILABLE", 0) + sum(refused.values()) >= 1, figures  # type: ignore[attr-defined]
    assert figures["probe_slowest_s"] > 2.0, f"the lock never stalled ingest: {figures}"


# ------------------------------------------------- PostgreSQL backends killed


@pytest.mark.slow  # 20 s
@pytest.mark.postgres
@pytest.mark.skipif(POSTGRES_URL is None, reason="OTRACE_TEST_POSTGRES_URL not set")
def test_postgres_connections_terminated_mid_ingest(tmp_path: Path) -> None:
    """The shared server cannot be restarted; terminating every backend of this node's
    connections (pg_terminate_backend, as a superuser) is what a restart does to it."""
    assert POSTGRES_URL is not None
    schema = f"otrace_rel_{uuid.uuid4().hex[:12]}"
    app = f"otrace-rel-{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}&application_name={app}"
    killed: list[int] = []

    @contextlib.contextmanager
    def terminate() -> Iterator[None]:
        for _ in range(3):
            with admin.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :app"
                    ),
                    {"app": app},
                ).all()
            killed.append(len(rows))
            time.sleep(1.5)
        yield

    node = Node(node_settings(tmp_path, store=url, epoch_ms=100))
    node.start()
    try:
        figures = _under_fault(node, terminate)
    finally:
        node.stop()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    print(json.dumps({"terminated_backends": killed}))
    assert sum(killed) > 0, "no backend of the node was found to terminate"
    refused = {k: v for k, v in figures["probe"].items() if k != "OK"}  # type: ignore[attr-defined]
    assert set(refused) <= {"UNAVAILABLE+RetryInfo"}, figures
