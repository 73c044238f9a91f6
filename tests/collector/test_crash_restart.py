"""SIGKILL `otrace serve` (host and enclave) mid-ingest: every acknowledged span, exactly once."""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from collector import Node
from tests.collector.conftest import node_settings, spans_of, stored
from tests.collector.otlp_helpers import grpc_export, request

ROOT = Path(__file__).resolve().parents[2]


def _start_server(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    args = [
        sys.executable,
        "-m",
        "otrace",
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--platform-dir",
        str(tmp_path / "platform"),
        "--otlp-grpc",
        "127.0.0.1:0",
        "--otlp-http",
        "127.0.0.1:0",
        "--metrics",
        "",
        "--oram-blocks",
        "1024",
        "--epoch",
        "30ms",
    ]
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(args, cwd=ROOT, stderr=sink, start_new_session=True, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if match := re.search(r"OTLP/gRPC :(\d+)", log.read_text()):
            return proc, int(match.group(1))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start (exit {proc.wait()}): {log.read_text()}")


def _send_until(port: int, stop: threading.Event, acked: list[str], counter: list[int]) -> None:
    while not stop.is_set():
        counter[0] += 1
        name = f"req{counter[0]}"
        req = request(4, name)
        try:
            grpc_export(port, req.SerializeToString())
            acked.append(name)
        except grpc.RpcError:
            return  # the server died under us: the request may or may not have landed


def _stored_services(tmp_path: Path) -> collections.Counter[str]:
    """Restarts a node on the same data and counts the stored spans per request name."""
    node = Node(node_settings(tmp_path, epoch_ms=200))
    node.start()
    try:
        return collections.Counter(s[4] for s in spans_of(stored(node)))
    finally:
        node.stop()


@pytest.mark.parametrize("kills", [int(os.environ.get("OTRACE_INGEST_KILLS", "4"))])
def test_acknowledged_spans_survive_sigkill_exactly_once(tmp_path: Path, kills: int) -> None:
    rnd = random.Random(7)
    acked: list[str] = []
    counter = [0]
    for _ in range(kills):
        proc, port = _start_server(tmp_path)
        stop = threading.Event()
        sender = threading.Thread(target=_send_until, args=(port, stop, acked, counter))
        sender.start()
        time.sleep(rnd.uniform(0.3, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)  # the host and its enclave process, at once
        proc.wait()
        stop.set()
        sender.join()
    assert len(acked) > kills  # work was really in flight
    services = _stored_services(tmp_path)
    for name in acked:
        assert services[name] == 4, f"{name}: {services[name]} of 4 acknowledged spans stored"
    assert all(count == 4 for count in services.values()), "a request was stored twice or torn"


def test_ctrl_c_stops_the_node_in_order_without_tracebacks(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group (host, enclave, builders):
    only the host acts on it and stops the others in order, so nothing prints a
    KeyboardInterrupt and every acknowledged span is stored."""
    proc, port = _start_server(tmp_path)
    acked = []
    for i in range(20):
        grpc_export(port, request(4, f"req{i}").SerializeToString())
        acked.append(f"req{i}")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    services = _stored_services(tmp_path)
    assert all(services[name] == 4 for name in acked)
