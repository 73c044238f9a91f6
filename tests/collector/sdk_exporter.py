"""Child process: the official OpenTelemetry Python SDK exporting a few traces.

Configured only through OTEL_* environment variables; OTEL_EXPORTER_OTLP_PROTOCOL
picks the gRPC or the HTTP exporter. Exits 1 if any export failed: the
BatchSpanProcessor itself only logs a failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class CountingExporter(SpanExporter):
    """Passes batches to the real exporter and counts the ones that did not succeed."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failed += 1
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.inner.shutdown()


def main() -> int:
    if os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = CountingExporter(OTLPSpanExporter())
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("otrace.tests")
    for i in range(int(os.environ.get("TRACES", "5"))):
        with tracer.start_as_current_span("GET /checkout", attributes={"http.route": "/checkout"}):
            with tracer.start_as_current_span("SELECT orders", attributes={"db.rows": i}) as child:
                child.set_attribute("customer", f"c-{i}")
    provider.force_flush()
    provider.shutdown()
    return 1 if exporter.failed else 0


if __name__ == "__main__":
    sys.exit(main())
