"""Child process: the official OpenTelemetry Python SDK exporting a few traces.

Configured only through OTEL_* environment variables; OTEL_EXPORTER_OTLP_PROTOCOL
picks the gRPC or the HTTP exporter. Prints `trace_id span_id parent name` lines.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def main() -> None:
    if os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("otrace.tests")
    for i in range(int(os.environ.get("TRACES", "5"))):
        with tracer.start_as_current_span("GET /checkout", attributes={"http.route": "/checkout"}):
            with tracer.start_as_current_span("SELECT orders", attributes={"db.rows": i}) as child:
                child.set_attribute("customer", f"c-{i}")
    provider.force_flush()
    provider.shutdown()


if __name__ == "__main__":
    main()
