"""Prebuilt OTLP load: realistic span trees, built in worker processes, sent over gRPC.

Workers build all their requests before the clock starts, so the harness is not
what is measured. Each worker sends with several threads, honours RetryInfo on
UNAVAILABLE (as the OTel exporters do) and reports per-request latencies.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = ["LoadResult", "build_requests", "send_requests"]

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SERVICES = ("frontend", "checkout", "cart", "payments", "shipping", "email", "ads", "catalog")
ROUTES = ("/", "/cart", "/checkout", "/product/{id}", "/api/recommend", "/api/ads", "/login")


@dataclass
class LoadResult:
    """What one worker saw."""

    acked_spans: int = 0
    failed_spans: int = 0
    retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    trace_sample: list[bytes] = field(default_factory=list)  # some acknowledged trace ids


def _trace(rnd: random.Random, now_ns: int, depth: int, attrs: int) -> list[tuple[str, Span]]:
    trace_id = rnd.randbytes(16)
    spans: list[tuple[str, Span]] = []

    def add(parent: bytes, level: int, start: int) -> None:
        service = SERVICES[rnd.randrange(len(SERVICES))]
        duration = int(rnd.lognormvariate(13.0, 1.2))  # ~0.4 ms median, long tail
        span = Span(
            trace_id=trace_id,
            span_id=rnd.randbytes(8),
            parent_span_id=parent,
            name=f"{'GET' if level == 0 else 'call'} {ROUTES[rnd.randrange(len(ROUTES))]}",
            kind=Span.SPAN_KIND_SERVER if level == 0 else Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start,
            end_time_unix_nano=start + duration,
        )
        error = rnd.random() < 0.02
        span.status.code = Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK
        for i in range(attrs):
            value = f"user-{rnd.randrange(100_000)}" if i == 0 else f"v{rnd.randrange(5)}"
            span.attributes.add(key=f"attr.{i}").value.string_value = value
        spans.append((service, span))
        if level + 1 < depth:
            for _ in range(rnd.randrange(1, 3)):
                add(span.span_id, level + 1, start + duration // 4)

    add(b"", 0, now_ns)
    return spans


def build_requests(
    spans: int,
    per_request: int,
    seed: int,
    *,
    depth: int = 4,
    attrs: int = 8,
    trace_ids: list[bytes] | None = None,
) -> list[tuple[bytes, int]]:
    """Serialized Export requests of about `per_request` spans each, `spans` in all;
    every trace id generated is appended to `trace_ids` if given."""
    rnd = random.Random(seed)
    now = time.time_ns()
    out: list[tuple[bytes, int]] = []
    made = 0
    while made < spans:
        by_service: dict[str, list[Span]] = {}
        count = 0
        while count < per_request and made + count < spans:
            trace = _trace(rnd, now, depth, attrs)[: spans - made - count]
            if trace_ids is not None:
                trace_ids.append(trace[0][1].trace_id)
            for service, span in trace:
                by_service.setdefault(service, []).append(span)
                count += 1
        req = ExportTraceServiceRequest()
        for service, group in by_service.items():
            rs = req.resource_spans.add()
            rs.resource.attributes.add(key="service.name").value.string_value = service
            rs.scope_spans.add().spans.extend(group)
        out.append((req.SerializeToString(), count))
        made += count
    return out


def send_requests(target: str, requests: list[tuple[bytes, int]], threads: int) -> LoadResult:
    """Sends every request once (retrying retryable refusals), `threads` at a time."""
    result = LoadResult()
    lock = threading.Lock()
    queue = list(reversed(requests))
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(EXPORT)

        def worker() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    body, count = queue.pop()
                _send_one(call, body, count, result, lock)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return result


def _send_one(
    call: grpc.UnaryUnaryMultiCallable,
    body: bytes,
    count: int,
    result: LoadResult,
    lock: threading.Lock,
) -> None:
    for _attempt in range(20):
        started = time.perf_counter()
        try:
            call(body, timeout=60)
        except grpc.RpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                break
            with lock:
                result.retries += 1
            time.sleep(_retry_delay(err))
            continue
        with lock:
            result.acked_spans += count
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
        return
    with lock:
        result.failed_spans += count


def _retry_delay(err: grpc.RpcError) -> float:
    for key, value in err.trailing_metadata() or ():
        if key == "google.rpc.retryinfo-bin":
            info = error_details_pb2.RetryInfo.FromString(value)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return 0.5
