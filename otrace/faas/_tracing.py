"""Trace plumbing: a tracer provider per role, and W3C context in and out of payloads.

The carrier (`traceparent`, `tracestate`, `baggage`) travels only inside the
encrypted payload; the controller never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["baggage_of", "extract_context", "inject_context", "otlp_tracer_provider"]

_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def otlp_tracer_provider(
    service: str,
    endpoint: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    batch: bool = True,
) -> TracerProvider:
    """A provider exporting over OTLP/gRPC to `endpoint` (`host:port`), TLS if `credentials`."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(
        endpoint=endpoint, insecure=credentials is None, credentials=credentials, timeout=5
    )
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


def inject_context(context: Context | None = None) -> dict[str, str]:
    """The current (or given) trace context and baggage as a W3C carrier."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_context(carrier: object) -> Context:
    """A context from a decrypted carrier; anything malformed yields an empty context."""
    if not isinstance(carrier, dict):
        return Context()
    clean = {k: v for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str)}
    return _PROPAGATOR.extract(clean, context=Context())


def baggage_of(context: Context) -> Mapping[str, str]:
    return {k: str(v) for k, v in otel_baggage.get_all(context).items()}
