"""A no-op OTLP endpoint that counts what it receives: the far end of `otrace loadtest`.

It answers `TraceService/Export` (gRPC, raw bytes, gzip handled by gRPC) and
`POST /v1/traces` (HTTP/1.1 keep-alive; protobuf or JSON, optionally gzip),
parses each request only to count its spans, and stores nothing. Both
listeners take port 0. A `refuse` policy lets tests script refusals (e.g.
UNAVAILABLE with RetryInfo three times, then OK).
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otrace.errors import ConfigError
from otrace.loadtest._transport import EXPORT

__all__ = ["OtlpSink", "Refusal", "SinkCounts"]

_OK = ExportTraceServiceResponse().SerializeToString()


@dataclass(frozen=True, slots=True)
class Refusal:
    """How the sink turns a request down: a gRPC code, an HTTP status, optional retry advice."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str = "refused by the test sink"
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class SinkCounts:
    """Accepted requests and spans, refused and malformed requests, bytes received."""

    requests: int = 0
    spans: int = 0
    refused: int = 0
    malformed: int = 0
    received_bytes: int = 0


class _Counter:
    def __init__(self, refuse: Callable[[], Refusal | None] | None) -> None:
        self._lock = threading.Lock()
        self._refuse = refuse
        self.counts = SinkCounts()

    def take(self, body: bytes, spans_of: Callable[[bytes], int]) -> Refusal | int:
        """Refusal, or the number of spans counted; -1 when the body does not parse."""
        refusal = None
        if self._refuse is not None:
            with self._lock:
                refusal = self._refuse()
        try:
            spans = -1 if refusal is not None else spans_of(body)
        except (DecodeError, ValueError, KeyError, TypeError):
            spans = -1
        with self._lock:
            c = replace(self.counts, received_bytes=self.counts.received_bytes + len(body))
            if refusal is not None:
                self.counts = replace(c, refused=c.refused + 1)
                return refusal
            if spans < 0:
                self.counts = replace(c, malformed=c.malformed + 1)
                return -1
            self.counts = replace(c, requests=c.requests + 1, spans=c.spans + spans)
            return spans


def _protobuf_spans(body: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(body)
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def _json_spans(body: bytes) -> int:
    data = json.loads(body)
    return sum(
        len(ss.get("spans", []))
        for rs in data.get("resourceSpans", [])
        for ss in rs.get("scopeSpans", [])
    )


def _refusal_status(refusal: Refusal) -> grpc.Status:
    status = status_pb2.Status(code=refusal.grpc_code.value[0], message=refusal.message)
    trailers: list[tuple[str, bytes]] = []
    if refusal.retry_after_s is not None:
        seconds = int(refusal.retry_after_s)
        delay = Duration(seconds=seconds, nanos=int((refusal.retry_after_s - seconds) * 1e9))
        info = error_details_pb2.RetryInfo(retry_delay=delay)
        status.details.add().Pack(info)
        trailers.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    trailers.insert(0, ("grpc-status-details-bin", status.SerializeToString()))
    return _Status(refusal.grpc_code, refusal.message, tuple(trailers))


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[Any, ...]) -> None:
        self.code, self.details, self.trailing_metadata = code, details, trailers


class _GrpcExport(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, counter: _Counter) -> None:
        self._counter = counter

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == EXPORT:
            return grpc.unary_unary_rpc_method_handler(self._export)
        return None

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        answer = self._counter.take(request, _protobuf_spans)
        if isinstance(answer, Refusal):
            context.abort_with_status(_refusal_status(answer))
        if answer == -1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not an ExportTraceServiceRequest")
        return _OK


def _http_handler(counter: _Counter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self._answer(404, b"")
                return
            try:
                if self.headers.get("Content-Encoding", "") == "gzip":
                    body = gzip.decompress(body)
            except (OSError, EOFError):
                self._answer(400, b"bad gzip body")
                return
            is_json = self.headers.get("Content-Type", "").startswith("application/json")
            answer = counter.take(body, _json_spans if is_json else _protobuf_spans)
            if isinstance(answer, Refusal):
                extra = {}
                if answer.retry_after_s is not None:
                    extra["Retry-After"] = str(max(0, round(answer.retry_after_s)))
                self._answer(answer.http_status, answer.message.encode(), extra)
            elif answer == -1:
                self._answer(400, b"not an ExportTraceServiceRequest")
            else:
                self._answer(200, b"{}" if is_json else _OK, content_type=is_json)

        def _answer(
            self,
            status: int,
            body: bytes,
            headers: dict[str, str] | None = None,
            content_type: bool = False,
        ) -> None:
            self.send_response(status)
            kind = "application/json" if content_type else "application/x-protobuf"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a sink under load would otherwise print a line per request

    return Handler


class OtlpSink:
    """Counting OTLP/gRPC and OTLP/HTTP listeners; either may be disabled with ''."""

    def __init__(
        self,
        grpc_address: str = "127.0.0.1:4317",
        http_address: str = "127.0.0.1:4318",
        *,
        refuse: Callable[[], Refusal | None] | None = None,
        grpc_workers: int = 16,
    ) -> None:
        self._counter = _Counter(refuse)
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._serving = False
        self.grpc_address = self.http_address = ""
        if grpc_address:
            self._grpc = grpc.server(
                ThreadPoolExecutor(max_workers=grpc_workers),
                options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)],
            )
            self._grpc.add_generic_rpc_handlers((_GrpcExport(self._counter),))
            try:
                port = self._grpc.add_insecure_port(grpc_address)
            except RuntimeError as exc:
                raise ConfigError(f"cannot listen for OTLP/gRPC on {grpc_address}: {exc}") from None
            self.grpc_address = f"{grpc_address.rsplit(':', 1)[0]}:{port}"
        if http_address:
            host, _, port_text = http_address.rpartition(":")
            try:
                handler = _http_handler(self._counter)
                self._http = ThreadingHTTPServer((host, int(port_text)), handler)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot listen for OTLP/HTTP on {http_address}: {exc}") from None
            self._http.daemon_threads = True
            self.http_address = f"{host}:{self._http.server_address[1]}"

    def counts(self) -> SinkCounts:
        return self._counter.counts

    def start(self) -> None:
        if self._grpc is not None:
            self._grpc.start()
        if self._http is not None:
            threading.Thread(
                target=self._http.serve_forever, name="otrace-sink-http", daemon=True
            ).start()
            self._serving = True

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(1.0).wait()
        if self._http is not None:
            if self._serving:
                self._http.shutdown()
                self._serving = False
            self._http.server_close()

    def __enter__(self) -> OtlpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
