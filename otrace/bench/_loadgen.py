"""Prebuilt OTLP load for the ingest benchmark, on the load-test harness's parts.

Workers build all their requests before the clock starts (with
`otrace.loadtest`'s trace generator), so the harness is not what is measured.
Each worker sends with several threads through the harness's gRPC transport,
which honours RetryInfo on UNAVAILABLE (as the OTel exporters do), and
reports per-request latencies.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from otrace.loadtest._retry import RetryPolicy
from otrace.loadtest._templates import build_pool
from otrace.loadtest._traces import TraceShape
from otrace.loadtest._transport import Endpoint, GrpcTransport, deliver

__all__ = ["LoadResult", "build_requests", "send_requests"]

# A benchmark waits out overload rather than dropping spans.
_PATIENT = RetryPolicy(max_attempts=20, initial_backoff_s=0.5, max_backoff_s=0.5, budget_s=600)


@dataclass
class LoadResult:
    """What one worker saw."""

    acked_spans: int = 0
    failed_spans: int = 0
    retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    trace_sample: list[bytes] = field(default_factory=list)  # some acknowledged trace ids


def build_requests(
    spans: int,
    per_request: int,
    seed: int,
    *,
    depth: int = 4,
    attrs: int = 8,
    trace_ids: list[bytes] | None = None,
) -> list[tuple[bytes, int]]:
    """Serialized Export requests of `per_request` spans each, exactly `spans` in all;
    every trace id is appended to `trace_ids` if given."""
    shape = TraceShape(depth=depth, attrs=attrs)
    pool = build_pool(shape, spans, per_request, seed, exact=True)
    if trace_ids is not None:
        for template in pool:
            for trace in range(template.traces):
                first = int(template.trace_first[trace])
                offset = int(template.span_offsets[first])
                # A serialized Span starts with its trace id: tag byte, length byte, 16 bytes.
                trace_ids.append(template.body[offset + 2 : offset + 18])
    return [(template.body, template.spans) for template in pool]


def send_requests(target: str, requests: list[tuple[bytes, int]], threads: int) -> LoadResult:
    """Sends every request once (retrying retryable refusals), `threads` at a time."""
    result = LoadResult()
    lock = threading.Lock()
    queue = list(reversed(requests))
    stop = threading.Event()

    def worker(seed: int) -> None:
        transport = GrpcTransport(Endpoint(target, timeout_s=60))
        rnd = random.Random(seed)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    body, count = queue.pop()
                done = deliver(transport, body, _PATIENT, rnd=rnd, stop=stop)
                with lock:
                    result.retries += sum(done.retries.values())
                    if done.attempt.code is None:
                        result.acked_spans += count
                        result.latencies_ms.append(done.latency_s * 1000)
                    else:
                        result.failed_spans += count
        finally:
            transport.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return result
