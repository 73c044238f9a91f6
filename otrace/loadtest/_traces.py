"""Realistic synthetic traces: a tree of spans across services, as plain specs.

A trace starts with a SERVER span at an entry service. Each span does some
work of its own (INTERNAL children), calls other services (a CLIENT span whose
child is the callee's SERVER span) or publishes a message (a PRODUCER span whose
child is a CONSUMER span in another service). Durations are log-normal and nest
inside their parent; a set fraction of spans end in an error status. Attributes
mix low-cardinality values (method, region, status code) with high-cardinality
ones (user ids, request ids), as real instrumentation does.

The specs here know nothing of protobuf or the SDK: `_templates` turns them
into OTLP requests, `_sdk` replays them through the OpenTelemetry SDK.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["KIND_NAMES", "SpanSpec", "TraceShape", "generate_trace", "service_names"]

_SERVICES = ("frontend", "checkout", "cart", "payments", "shipping", "email", "ads", "catalog")
_ROUTES = ("/", "/cart", "/checkout", "/product/{id}", "/api/recommend", "/api/ads", "/login")
_OPERATIONS = ("validate", "render", "serialize", "load-config", "compute-price", "auth")
_TOPICS = ("orders", "emails", "events")
_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
_METHODS = ("GET", "GET", "GET", "POST", "PUT")

# OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind values).
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5
KIND_NAMES = {INTERNAL: "INTERNAL", SERVER: "SERVER", CLIENT: "CLIENT", PRODUCER: "PRODUCER",
              CONSUMER: "CONSUMER"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TraceShape:
    """What traces look like: services involved, tree depth, attributes per span."""

    services: int = 8
    depth: int = 4
    attrs: int = 10
    error_rate: float = 0.02
    median_root_ms: float = 40.0


@dataclass(frozen=True, slots=True)
class SpanSpec:
    """One span of a generated trace; `parent` indexes the trace's span list (-1: root)."""

    span_id: bytes
    parent: int
    service: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    error: bool
    attributes: tuple[tuple[str, str | int], ...]


def service_names(count: int) -> tuple[str, ...]:
    """The first `count` service names (well-known ones, then `service-9`, ...)."""
    return tuple(_SERVICES[i] if i < len(_SERVICES) else f"service-{i + 1}" for i in range(count))


def generate_trace(
    rnd: random.Random, shape: TraceShape, now_ns: int
) -> tuple[bytes, list[SpanSpec]]:
    """A trace id and its spans, parents before children."""
    trace_id = rnd.randbytes(16)
    services = service_names(shape.services)
    spans: list[SpanSpec] = []
    root_ns = int(rnd.lognormvariate(0.0, 0.8) * shape.median_root_ms * 1e6)
    start = now_ns - root_ns
    _grow(rnd, shape, services, spans, -1, services[0], SERVER, 0, start, start + root_ns)
    return trace_id, spans


def _grow(
    rnd: random.Random,
    shape: TraceShape,
    services: tuple[str, ...],
    spans: list[SpanSpec],
    parent: int,
    service: str,
    kind: int,
    level: int,
    start: int,
    end: int,
) -> None:
    index = len(spans)
    spans.append(_span(rnd, shape, parent, service, kind, level, start, end))
    if level + 1 >= shape.depth:
        return
    if kind in (CLIENT, PRODUCER):
        callee = _other(rnd, services, service)
        child_kind = SERVER if kind == CLIENT else CONSUMER
        lo, hi = _nested(rnd, start, end)
        _grow(rnd, shape, services, spans, index, callee, child_kind, level + 1, lo, hi)
        return
    for _ in range(rnd.randrange(1, 3)):
        roll = rnd.random()
        child_kind = CLIENT if roll < 0.7 else INTERNAL if roll < 0.9 else PRODUCER
        lo, hi = _nested(rnd, start, end)
        _grow(rnd, shape, services, spans, index, service, child_kind, level + 1, lo, hi)


def _nested(rnd: random.Random, start: int, end: int) -> tuple[int, int]:
    """A child interval inside [start, end]: log-normal share of the parent's time."""
    span = max(1, end - start)
    share = min(0.95, rnd.lognormvariate(-1.2, 0.7))
    length = max(1, int(span * share))
    offset = int((span - length) * rnd.random() * 0.5)
    return start + offset, start + offset + length


def _other(rnd: random.Random, services: tuple[str, ...], service: str) -> str:
    if len(services) == 1:
        return service
    while True:
        pick = services[rnd.randrange(len(services))]
        if pick != service:
            return pick


def _span(
    rnd: random.Random,
    shape: TraceShape,
    parent: int,
    service: str,
    kind: int,
    level: int,
    start: int,
    end: int,
) -> SpanSpec:
    route = _ROUTES[rnd.randrange(len(_ROUTES))]
    method = _METHODS[rnd.randrange(len(_METHODS))]
    if kind in (SERVER, CLIENT):
        name = f"{method} {route}"
    elif kind in (PRODUCER, CONSUMER):
        topic = _TOPICS[rnd.randrange(len(_TOPICS))]
        name = f"{topic} {'publish' if kind == PRODUCER else 'process'}"
    else:
        name = _OPERATIONS[rnd.randrange(len(_OPERATIONS))]
    error = rnd.random() < shape.error_rate
    return SpanSpec(
        span_id=rnd.randbytes(8),
        parent=parent,
        service=service,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=end,
        error=error,
        attributes=_attributes(rnd, shape.attrs, method, route, error, level),
    )


def _attributes(
    rnd: random.Random, count: int, method: str, route: str, error: bool, level: int
) -> tuple[tuple[str, str | int], ...]:
    # Alternate low- and high-cardinality values, semantic-convention keys first.
    pool: list[tuple[str, str | int]] = [
        ("http.request.method", method),
        ("user.id", f"user-{rnd.randrange(1_000_000)}"),
        ("http.route", route),
        ("request.id", rnd.randbytes(8).hex()),
        ("http.response.status_code", 500 if error else 200),
        ("session.id", rnd.randbytes(6).hex()),
        ("cloud.region", _REGIONS[rnd.randrange(len(_REGIONS))]),
        ("db.rows", rnd.randrange(10_000)),
        ("tree.level", level),
        ("cart.items", rnd.randrange(20)),
    ]
    while len(pool) < count:
        i = len(pool)
        value: str | int = f"v{rnd.randrange(5)}" if i % 2 else f"id-{rnd.randrange(1 << 30)}"
        pool.append((f"attr.{i}", value))
    return tuple(pool[:count])
