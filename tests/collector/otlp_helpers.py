"""Building OTLP requests and sending raw bytes over gRPC and HTTP."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector._grpc_receiver import EXPORT

ROOT = Path(__file__).resolve().parents[2]
# requests lets these override the session's `verify`, so with either one set the
# HTTP exporter would ignore OTEL_EXPORTER_OTLP_CERTIFICATE.
_CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def request(
    spans: int = 3, service: str = "svc", trace_id: bytes | None = None
) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    tid = trace_id or os.urandom(16)
    now = time.time_ns()  # inside the retention, so the spans stay searchable
    for i in range(spans):
        span = ss.spans.add(trace_id=tid, span_id=os.urandom(8), name=f"op-{i}")
        span.start_time_unix_nano, span.end_time_unix_nano = now, now + 1000
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


def run_sdk_exporter(env: dict[str, str], *, traces: int = 5) -> subprocess.CompletedProcess[str]:
    """Runs tests/collector/sdk_exporter.py (two spans a trace) configured by `env` alone.

    Inherited OTEL_* and CA-bundle variables are dropped. Its exit code is 1 when
    an export failed; its stderr holds the SDK's log.
    """
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_") and k not in _CA_BUNDLE_VARIABLES
    }
    return subprocess.run(
        [sys.executable, "-m", "tests.collector.sdk_exporter"],
        cwd=ROOT,
        env={**inherited, **env, "TRACES": str(traces)},
        capture_output=True,
        text=True,
        timeout=60,
    )
