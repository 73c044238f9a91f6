"""Load shedding with RetryInfo, and bearer-token auth, over real servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cbor2
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from collector import GroupCommitter, GrpcReceiver, HttpReceiver, Node
from tests.collector.conftest import node_settings, spans_of, stored
from tests.collector.otlp_helpers import grpc_export, http_post, request


class _StuckEnclave:
    """An ingest ecall that waits until released (the enclave is busy)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, name: str, payload: bytes) -> bytes:
        self.entered.set()
        self.release.wait(30)
        items = cbor2.loads(payload)
        return cbor2.dumps({"outcomes": [[True, 1, 0, ""] for _ in items], "depth": 0})


@pytest.fixture
def stuck() -> Iterator[tuple[_StuckEnclave, GroupCommitter, GrpcReceiver, HttpReceiver]]:
    enclave = _StuckEnclave()
    committer = GroupCommitter(enclave, max_pending=1, retry_after=2.0)
    grpc_rx = GrpcReceiver(committer, "127.0.0.1:0", max_request_bytes=1 << 20)
    http_rx = HttpReceiver(committer, "127.0.0.1:0", max_request_bytes=1 << 20)
    grpc_rx.start()
    http_rx.start()
    try:
        yield enclave, committer, grpc_rx, http_rx
    finally:
        enclave.release.set()
        grpc_rx.stop()
        http_rx.stop()
        committer.close()


def test_overload_answers_unavailable_with_retry_info(stuck) -> None:  # type: ignore[no-untyped-def]
    enclave, _, grpc_rx, http_rx = stuck
    body = request(1).SerializeToString()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(grpc_export, grpc_rx.port, body)  # in the ecall
        assert enclave.entered.wait(10)
        second = pool.submit(grpc_export, grpc_rx.port, body)  # queued: the queue is full
        while not stuck[1]._queue:
            threading.Event().wait(0.01)
        with pytest.raises(grpc.RpcError) as err:
            grpc_export(grpc_rx.port, body)
        status, headers, _ = http_post(http_rx.port, body)
        enclave.release.set()
        assert first.result(timeout=10) == b"" and second.result(timeout=10) == b""
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    trailers = dict(err.value.trailing_metadata())
    retry = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    assert retry.retry_delay.seconds == 2
    details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert details.code == 14 and details.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    assert status == 503 and headers["Retry-After"] == "2"


def test_bearer_token_is_required_when_configured(tmp_path: Path) -> None:
    node = Node(node_settings(tmp_path, auth_token="s3cret-token"))
    node.start()
    try:
        assert node.grpc is not None and node.http is not None
        body = request(2, "authed").SerializeToString()
        with pytest.raises(grpc.RpcError) as err:
            grpc_export(node.grpc.port, body)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            grpc_export(node.grpc.port, body, (("authorization", "Bearer wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert http_post(node.http.port, body)[0] == 401
        grpc_export(node.grpc.port, body, (("authorization", "Bearer s3cret-token"),))
        ok = http_post(node.http.port, body, headers={"Authorization": "Bearer s3cret-token"})
        assert ok[0] == 200
        assert len(spans_of(stored(node))) == 4
    finally:
        node.stop()


def test_a_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    import socket

    from otrace.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node(node_settings(tmp_path, otlp_http=f"127.0.0.1:{port}"))
        with pytest.raises(ConfigError, match="cannot listen for OTLP/HTTP"):
            node.start()
    assert node.enclave is None and node.grpc is None and node.committer is None


def test_shedding_on_journal_depth_ends_once_the_journal_drains() -> None:
    """Only ingest replies reported the depth, so once it passed the bound nothing was
    ever ingested again (found by tests/reliability/test_overload.py): the committer
    now polls the depth while it sheds on it."""
    depth = [100]
    calls: list[int] = []

    def enclave(name: str, payload: bytes) -> bytes:
        items = cbor2.loads(payload)
        calls.append(len(items))
        rows = [[True, 1, 0, ""] for _ in items]
        return cbor2.dumps({"outcomes": rows, "depth": depth[0]})

    from collector import Overloaded

    committer = GroupCommitter(enclave, max_journal_depth=10, depth_poll_s=0.01)
    try:
        committer.submit("application/x-protobuf", b"").result(timeout=10)
        with pytest.raises(Overloaded, match="journal depth 100"):
            committer.submit("application/x-protobuf", b"")
        depth[0] = 0  # the epochs drained the journal
        for _ in range(500):
            if not committer.journal_depth:
                break
            threading.Event().wait(0.01)
        assert committer.submit("application/x-protobuf", b"").result(timeout=10).ok
        assert 0 in calls  # the empty ingest that asked
    finally:
        committer.close()
