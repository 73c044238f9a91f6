"""Prebuilt OTLP Export requests, reused round after round with fresh trace ids.

Building protobuf spans costs tens of microseconds each in Python, far too
slow to drive 100k spans/s. So a worker builds a pool of serialized requests
once, before the clock starts, and cycles through it. Each round XORs a
per-round 64-bit mask into the last 8 bytes of every trace id, in place in the
serialized bytes (numpy, one vectorised operation per request): the same
trace shapes, new traces. The masks are distinct per round (splitmix64 is a
bijection), so no trace id repeats within a worker; workers use distinct salts.

Whole traces stay within one request, so a trace is acknowledged (or not) as
a unit. The template records where each span's bytes sit in the request, so
the ledger can digest exactly the bytes that were sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from otrace.loadtest._traces import SpanSpec, TraceShape, generate_trace

__all__ = [
    "RequestTemplate",
    "build_pool",
    "build_request",
    "round_mask",
    "sample_key",
    "sample_keys",
]

_MASK64 = (1 << 64) - 1
# A serialized Span starts with trace_id (field 1, 16 bytes) then span_id (field 2, 8 bytes).
_TRACE_TAG, _SPAN_TAG = b"\x0a\x10", b"\x12\x08"


def sample_key(trace_id: bytes) -> int:
    """The 64-bit hash that decides which traces the ledger keeps (smallest keys win)."""
    z = (int.from_bytes(trace_id[8:16], "big") + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_keys(suffixes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """`sample_key` for many trace-id suffixes (big-endian u64 of bytes 8..16) at once."""
    z = suffixes + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def round_mask(salt: int, round_no: int) -> int:
    """The mask XORed into trace-id suffixes in `round_no`; distinct for distinct rounds."""
    return sample_key(((salt + round_no) & _MASK64).to_bytes(16, "big"))


@dataclass(frozen=True, slots=True, eq=False)
class RequestTemplate:
    """One serialized Export request and where its traces' spans sit in it."""

    body: bytes
    spans: int
    suffixes: npt.NDArray[np.uint64]  # per trace: bytes 8..16 of its id, big-endian
    trace_first: npt.NDArray[np.int64]  # per trace: index of its first span (CSR, +1 entry)
    span_offsets: npt.NDArray[np.int64]  # per span: offset of its bytes in body
    span_lengths: npt.NDArray[np.int64]
    _patch_at: npt.NDArray[np.int64]  # body offsets of every span's 8 suffix bytes

    @property
    def traces(self) -> int:
        return len(self.suffixes)

    def with_mask(self, mask: int) -> bytes:
        """The body with `mask` XORed into every trace id's suffix."""
        if mask == 0:
            return self.body
        buf = np.frombuffer(self.body, dtype=np.uint8).copy()
        pattern = np.frombuffer(mask.to_bytes(8, "big"), dtype=np.uint8)
        buf[self._patch_at] ^= np.tile(pattern, self.spans)
        return buf.tobytes()

    def keys(self, mask: int) -> npt.NDArray[np.uint64]:
        """`sample_key` of every trace id once `mask` is applied."""
        return sample_keys(self.suffixes ^ np.uint64(mask))

    def trace_spans(self, body: bytes, trace: int) -> Iterator[tuple[bytes, bytes]]:
        """(span id, serialized span) for each span of trace number `trace` in `body`."""
        for i in range(int(self.trace_first[trace]), int(self.trace_first[trace + 1])):
            off, length = int(self.span_offsets[i]), int(self.span_lengths[i])
            yield body[off + 20 : off + 28], body[off : off + length]


def span_proto(trace_id: bytes, specs: list[SpanSpec], spec: SpanSpec) -> Span:
    span = Span(
        trace_id=trace_id,
        span_id=spec.span_id,
        parent_span_id=specs[spec.parent].span_id if spec.parent >= 0 else b"",
        name=spec.name,
        kind=spec.kind,  # type: ignore[arg-type]
        start_time_unix_nano=spec.start_ns,
        end_time_unix_nano=spec.end_ns,
    )
    if spec.error:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = "synthetic failure"
    for key, value in spec.attributes:
        attr = span.attributes.add(key=key)
        if isinstance(value, int):
            attr.value.int_value = value
        else:
            attr.value.string_value = value
    return span


def _resource(service: str) -> ResourceSpans:
    rs = ResourceSpans()
    for key, value in (
        ("service.name", service),
        ("service.version", "1.4.2"),
        ("deployment.environment", "loadtest"),
        ("host.name", f"{service}-7d9f"),
    ):
        rs.resource.attributes.add(key=key).value.string_value = value
    rs.scope_spans.add().scope.name = "otrace.loadtest"
    return rs


def build_request(
    rnd: random.Random, shape: TraceShape, min_spans: int, now_ns: int, *, exact: bool = False
) -> tuple[ExportTraceServiceRequest, list[tuple[bytes, list[Span]]]]:
    """Whole traces, at least `min_spans` spans, grouped by service into one request.

    With `exact`, the last trace is cut (keeping a tree: parents come first) so
    the request holds exactly `min_spans`. Returns the request and, per trace,
    its id and its spans in request order.
    """
    traces = []
    count = 0
    while count < min_spans:
        trace_id, specs = generate_trace(rnd, shape, now_ns)
        if exact:
            specs = specs[: min_spans - count]
        traces.append((trace_id, [(s.service, span_proto(trace_id, specs, s)) for s in specs]))
        count += len(specs)
    by_service: dict[str, ResourceSpans] = {}
    for _, spans in traces:
        for service, span in spans:
            if service not in by_service:
                by_service[service] = _resource(service)
            by_service[service].scope_spans[0].spans.append(span)
    request = ExportTraceServiceRequest(resource_spans=list(by_service.values()))
    return request, [(tid, [span for _, span in spans]) for tid, spans in traces]


def _template(
    request: ExportTraceServiceRequest, traces: list[tuple[bytes, list[Span]]]
) -> RequestTemplate:
    body = request.SerializeToString()
    where: dict[bytes, tuple[int, int]] = {}
    cursor = 0
    # Spans serialize in request order, so one forward scan finds each of them.
    for rs in request.resource_spans:
        for span in rs.scope_spans[0].spans:
            raw = span.SerializeToString()
            if raw[:2] != _TRACE_TAG or raw[18:20] != _SPAN_TAG:
                raise ValueError("unexpected span encoding: trace_id/span_id not leading")
            cursor = body.index(raw, cursor)
            where[raw[2:18] + raw[20:28]] = (cursor, len(raw))
            cursor += len(raw)
    offsets, lengths, first = [], [], [0]
    for trace_id, spans in traces:
        for span in spans:
            off, length = where[trace_id + span.span_id]
            offsets.append(off)
            lengths.append(length)
        first.append(len(offsets))
    offsets_arr = np.array(offsets, dtype=np.int64)
    return RequestTemplate(
        body=body,
        spans=len(offsets),
        suffixes=np.array([int.from_bytes(t[8:], "big") for t, _ in traces], dtype=np.uint64),
        trace_first=np.array(first, dtype=np.int64),
        span_offsets=offsets_arr,
        span_lengths=np.array(lengths, dtype=np.int64),
        _patch_at=(offsets_arr[:, None] + np.arange(10, 18, dtype=np.int64)).ravel(),
    )


def build_pool(
    shape: TraceShape,
    spans: int,
    per_request: int,
    seed: int,
    *,
    now_ns: int | None = None,
    exact: bool = False,
) -> list[RequestTemplate]:
    """Templates holding at least `spans` spans in requests of about `per_request` spans.

    With `exact`, requests hold exactly `per_request` spans (the last one the
    rest) and the pool exactly `spans`: each request's last trace may be cut
    short (a smaller tree; its missing spans are never sent).
    """
    rnd = random.Random(seed)
    now = time.time_ns() if now_ns is None else now_ns
    pool: list[RequestTemplate] = []
    made = 0
    while made < spans:
        want = min(per_request, spans - made)
        request, traces = build_request(rnd, shape, want, now, exact=exact)
        pool.append(_template(request, traces))
        made += pool[-1].spans
    return pool
