"""Building OTLP requests and sending raw bytes over gRPC and HTTP."""

from __future__ import annotations

import gzip
import os
import urllib.error
import urllib.request

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector._grpc_receiver import EXPORT


def request(
    spans: int = 3, service: str = "svc", trace_id: bytes | None = None
) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    tid = trace_id or os.urandom(16)
    for i in range(spans):
        span = ss.spans.add(trace_id=tid, span_id=os.urandom(8), name=f"op-{i}")
        span.start_time_unix_nano, span.end_time_unix_nano = 10**18, 10**18 + 1000
    return req


def grpc_export(port: int, body: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(EXPORT)
        return call(body, metadata=metadata, timeout=30)  # type: ignore[no-any-return]


def http_post(
    port: int,
    body: bytes,
    content_type: str = "application/x-protobuf",
    *,
    gzipped: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if gzipped:
        body = gzip.compress(body)
        all_headers["Content-Encoding"] = "gzip"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", body, all_headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
