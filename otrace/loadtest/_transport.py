"""Sending one serialized Export request over OTLP/gRPC or OTLP/HTTP, and retrying it.

A `Transport` makes one attempt and says what came back (`Attempt`); `deliver`
retries retryable answers under a `RetryPolicy`. Transports send raw bytes:
nothing is parsed on the way out, and only the small response is parsed on the
way back (for `partial_success`). Each sending thread owns its transport.
"""

from __future__ import annotations

import gzip
import http.client
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otrace.loadtest._retry import (
    RETRYABLE_GRPC,
    RETRYABLE_HTTP,
    Attempt,
    RetryPolicy,
    parse_retry_after,
    retry_info_delay,
)

__all__ = ["EXPORT", "Delivery", "GrpcTransport", "HttpTransport", "Transport", "deliver"]

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_MAX_MESSAGE = 64 << 20


class Transport(Protocol):
    """One Export attempt at a time."""

    def export(self, body: bytes) -> Attempt: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to send: `host:port`, headers, gzip, TLS roots, per-attempt timeout."""

    target: str
    headers: tuple[tuple[str, str], ...] = ()
    gzip: bool = False
    tls_ca: bytes | None = None
    timeout_s: float = 10.0


class GrpcTransport:
    """`TraceService/Export` through a raw-bytes unary call."""

    def __init__(self, endpoint: Endpoint) -> None:
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ]
        if endpoint.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=endpoint.tls_ca)
            self._channel = grpc.secure_channel(endpoint.target, creds, options)
        else:
            self._channel = grpc.insecure_channel(endpoint.target, options)
        self._call = self._channel.unary_unary(EXPORT)
        self._metadata = tuple((k.lower(), v) for k, v in endpoint.headers)
        self._compression = grpc.Compression.Gzip if endpoint.gzip else None
        self._timeout = endpoint.timeout_s

    def export(self, body: bytes) -> Attempt:
        try:
            answer = self._call(
                body,
                timeout=self._timeout,
                metadata=self._metadata,
                compression=self._compression,
            )
        except grpc.RpcError as err:
            code = err.code().name
            delay = retry_info_delay(err.trailing_metadata())
            retryable = code in RETRYABLE_GRPC or (
                code == "RESOURCE_EXHAUSTED" and delay is not None
            )
            return Attempt(code, retryable, delay, message=str(err.details() or ""))
        return _accepted(answer)

    def close(self) -> None:
        self._channel.close()


class HttpTransport:
    """`POST /v1/traces` (protobuf) on one keep-alive connection."""

    def __init__(self, endpoint: Endpoint, path: str = "/v1/traces") -> None:
        host, _, port = endpoint.target.rpartition(":")
        self._host, self._port, self._path = host.strip("[]"), int(port), path
        self._context = None
        if endpoint.tls_ca is not None:
            self._context = ssl.create_default_context(cadata=endpoint.tls_ca.decode())
        self._headers = {"Content-Type": "application/x-protobuf", **dict(endpoint.headers)}
        if endpoint.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._gzip = endpoint.gzip
        self._timeout = endpoint.timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._context is not None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def export(self, body: bytes) -> Attempt:
        payload = gzip.compress(body, compresslevel=1) if self._gzip else body
        try:
            conn = self._connection()
            conn.request("POST", self._path, payload, self._headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Attempt("CONNECTION_ERROR", True, None, message=str(exc))
        if response.status == 200:
            return _accepted(data)
        delay = parse_retry_after(response.getheader("Retry-After"))
        retryable = response.status in RETRYABLE_HTTP
        return Attempt(f"HTTP {response.status}", retryable, delay, message=response.reason)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _accepted(answer: bytes) -> Attempt:
    try:
        rejected = ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans
    except DecodeError:
        return Attempt("BAD_RESPONSE", message="the Export answer is not an OTLP response")
    return Attempt(None, rejected_spans=int(rejected))


@dataclass(slots=True)
class Delivery:
    """What became of one request after its retries."""

    attempt: Attempt  # the last one
    latency_s: float  # of the last attempt
    retries: Counter[str] = field(default_factory=Counter)  # code -> retries it caused
    waited_s: float = 0.0


def deliver(
    transport: Transport,
    body: bytes,
    policy: RetryPolicy,
    *,
    rnd: random.Random,
    stop: threading.Event,
) -> Delivery:
    """Sends `body` until it is answered, refused for good, or the retry budget runs out.

    Waits are cut short by `stop` (the request then ends with its last answer).
    """
    retries: Counter[str] = Counter()
    waited = 0.0
    retry_no = 0
    while True:
        started = time.perf_counter()
        attempt = transport.export(body)
        latency = time.perf_counter() - started
        if attempt.code is None or not attempt.retryable:
            return Delivery(attempt, latency, retries, waited)
        retry_no += 1
        delay = policy.delay(attempt, retry_no, rnd)
        if retry_no >= policy.max_attempts or waited + delay > policy.budget_s:
            return Delivery(attempt, latency, retries, waited)
        retries[attempt.code] += 1
        if stop.wait(delay):
            return Delivery(attempt, latency, retries, waited)
        waited += delay
