"""`--sdk`: the same generated traces, sent through the OpenTelemetry Python SDK exporters.

For compatibility, not speed: spans are created with the SDK's tracer (one
`TracerProvider` per service, so each carries its own resource), batched by
`BatchSpanProcessor` and exported by the official OTLP gRPC or HTTP exporter,
which does its own retrying. A wrapping exporter counts what each export
returned and feeds the ledger with the spans as the exporter encodes them.
The SDK reports failure without a status code (it logs it), so failed spans
count under `SDK_EXPORT_FAILED`; it reports no partial success either.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from otrace.errors import ConfigError
from otrace.loadtest._config import LoadConfig
from otrace.loadtest._ledger import AckLedger
from otrace.loadtest._tally import Pacer, WorkerStats
from otrace.loadtest._templates import sample_key
from otrace.loadtest._traces import SpanSpec, generate_trace, service_names

__all__ = ["SdkLoad"]

try:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # the SDK is optional: only --sdk needs it
    raise ConfigError(
        "--sdk needs the OpenTelemetry SDK and OTLP exporters: pip install opentelemetry-sdk "
        f"opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http ({exc})"
    ) from None

FAILED = "SDK_EXPORT_FAILED"
_KINDS = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT, 4: SpanKind.PRODUCER,
          5: SpanKind.CONSUMER}  # fmt: skip


class _CountingExporter(SpanExporter):
    """Passes batches to the real exporter; counts and remembers what it acknowledged."""

    def __init__(self, inner: SpanExporter, stats: WorkerStats, ledger: AckLedger) -> None:
        self._inner, self._stats, self._ledger = inner, stats, ledger
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._stats.sending(len(spans), 0)
        started = time.perf_counter()
        result = self._inner.export(spans)
        latency = time.perf_counter() - started
        ok = result is SpanExportResult.SUCCESS
        if ok:
            self._remember(spans)
        self._stats.answered(len(spans), None if ok else FAILED, 0, latency, Counter())
        return result

    def _remember(self, spans: Sequence[ReadableSpan]) -> None:
        with self._lock:
            threshold = self._ledger.threshold()
            picked = [
                s
                for s in spans
                if s.context is not None
                and sample_key(s.context.trace_id.to_bytes(16, "big")) < threshold
            ]
            if not picked:
                return
            for rs in encode_spans(picked).resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        raw = span.SerializeToString()
                        self._ledger.record(span.trace_id, [(span.span_id, raw)])

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self._inner.shutdown()


class SdkLoad:
    """One worker's SDK pipeline: tracer providers per service, paced trace generation."""

    def __init__(self, config: LoadConfig, index: int) -> None:
        self.config = config
        self.stats = WorkerStats()
        self.ledger = AckLedger(config.sample)
        self._seed = config.seed * 7919 + index
        self._ca_file = _ca_file(config.endpoint.tls_ca)
        self._providers: dict[str, TracerProvider] = {}
        for service in service_names(config.shape.services):
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            exporter = _CountingExporter(self._exporter(), self.stats, self.ledger)
            provider.add_span_processor(
                BatchSpanProcessor(exporter, max_queue_size=1 << 16, schedule_delay_millis=200)
            )
            self._providers[service] = provider

    def _exporter(self) -> SpanExporter:
        ep = self.config.endpoint
        if self.config.protocol == "grpc":
            import grpc
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            creds = None if ep.tls_ca is None else grpc.ssl_channel_credentials(ep.tls_ca)
            return OTLPSpanExporter(
                endpoint=ep.target,
                insecure=ep.tls_ca is None,
                credentials=creds,
                headers=dict(ep.headers),
                timeout=ep.timeout_s,
                compression=grpc.Compression.Gzip if ep.gzip else grpc.Compression.NoCompression,
            )
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        scheme = "http" if ep.tls_ca is None else "https"
        return HttpExporter(
            endpoint=f"{scheme}://{ep.target}/v1/traces",
            certificate_file=self._ca_file,
            headers=dict(ep.headers),
            timeout=ep.timeout_s,
            compression=Compression.Gzip if ep.gzip else Compression.NoCompression,
        )

    def run(self, stop: threading.Event) -> None:
        rnd = random.Random(self._seed)
        pacer = Pacer(self.config.worker_rate(), self.config.duration_s, stop)
        try:
            while True:
                _, specs = generate_trace(rnd, self.config.shape, time.time_ns())
                if not pacer.admit(len(specs)):
                    break
                self._emit(specs)
        finally:
            for provider in self._providers.values():
                provider.force_flush()
                provider.shutdown()
            if self._ca_file is not None:
                os.unlink(self._ca_file)

    def _emit(self, specs: list[SpanSpec]) -> None:
        made: list[Any] = []
        for spec in specs:
            tracer = self._providers[spec.service].get_tracer("otrace.loadtest")
            parent = None if spec.parent < 0 else trace.set_span_in_context(made[spec.parent])
            span = tracer.start_span(
                spec.name,
                context=parent,
                kind=_KINDS[spec.kind],
                attributes=dict(spec.attributes),
                start_time=spec.start_ns,
            )
            if spec.error:
                span.set_status(Status(StatusCode.ERROR, "synthetic failure"))
            made.append(span)
        for span, spec in zip(reversed(made), reversed(specs), strict=True):
            span.end(end_time=spec.end_ns)


def _ca_file(pem: bytes | None) -> str | None:
    # The HTTP exporter takes a file name, not bytes.
    if pem is None:
        return None
    fd, name = tempfile.mkstemp(prefix="otrace-loadtest-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return name
