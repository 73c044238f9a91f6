"""A node with spans of known shape, shared by the query API and CLI tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from collector import Node
from tests.collector.conftest import node_settings
from tests.collector.otlp_helpers import grpc_export

MS = 10**6


@dataclass
class Loaded:
    node: Node
    now: int
    slow_trace: bytes  # checkout, 3 spans, root 900 ms, error, http.status_code=500
    traces: dict[bytes, int]  # every trace id -> its span count

    @property
    def endpoint(self) -> str:
        assert self.node.query is not None
        return f"127.0.0.1:{self.node.query.port}"


def trace_request(
    service: str, start: int, root_ms: int, *, error: bool = False, status_code: int = 200
) -> tuple[bytes, ExportTraceServiceRequest]:
    """A three-span trace: root (SERVER) -> db call -> cache call."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    tid, parent = os.urandom(16), b""
    for depth, (name, ms) in enumerate(
        (("GET /cart", root_ms), ("SELECT cart", root_ms // 2), ("cache get", 1))
    ):
        span = ss.spans.add(trace_id=tid, span_id=os.urandom(8), parent_span_id=parent, name=name)
        span.kind = Span.SPAN_KIND_SERVER if depth == 0 else Span.SPAN_KIND_CLIENT
        span.start_time_unix_nano = start + depth * MS
        span.end_time_unix_nano = span.start_time_unix_nano + ms * MS
        if depth == 0:
            span.attributes.add(key="http.status_code").value.int_value = status_code
            if error:
                span.status.code = Status.STATUS_CODE_ERROR
        parent = span.span_id
    return tid, req


def load(node: Node, now: int) -> Loaded:
    assert node.grpc is not None
    traces: dict[bytes, int] = {}
    slow, req = trace_request("checkout", now - 60 * 10**9, 900, error=True, status_code=500)
    grpc_export(node.grpc.port, req.SerializeToString())
    traces[slow] = 3
    for i in range(30):
        service = ("checkout", "cart", "payments")[i % 3]
        tid, req = trace_request(service, now - i * 10**9, 20 + i)
        grpc_export(node.grpc.port, req.SerializeToString())
        traces[tid] = 3
    node.flush()
    return Loaded(node, now, slow, traces)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    tmp: Path = tmp_path_factory.mktemp("query-node")
    node = Node(node_settings(tmp, search_reads=16, trace_reads=4))
    node.start()
    try:
        yield load(node, time.time_ns())
    finally:
        node.stop()
