'use strict';
// Child process of tests/collector/test_js_sdk.py: the official OpenTelemetry
// JavaScript SDK exporting a few traces through its OTLP/gRPC exporter.
//
// Configured only through environment variables: OTEL_EXPORTER_OTLP_ENDPOINT
// and the rest of OTEL_EXPORTER_OTLP_* (read by the exporter), OTEL_SERVICE_NAME
// (read by the resource's env detector), and TRACES for how many traces to make.
// Prints one JSON line per span it made, {trace, span, parent, name}, so the
// test can compare what it made with what the node stored. Exits 1 if any
// export failed: the BatchSpanProcessor itself only logs a failure.

const { diag, DiagConsoleLogger, DiagLogLevel } = require('@opentelemetry/api');
const { ExportResultCode } = require('@opentelemetry/core');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
const { defaultResource, detectResources, envDetector } = require('@opentelemetry/resources');
const { BatchSpanProcessor, NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');

diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);

let failedExports = 0;

/** Passes batches to the real exporter and counts the ones that did not succeed. */
class CountingExporter {
  constructor(inner) {
    this.inner = inner;
  }

  export(spans, done) {
    this.inner.export(spans, (result) => {
      if (result.code !== ExportResultCode.SUCCESS) {
        failedExports += 1;
        console.error(`export of ${spans.length} spans failed: ${result.error}`);
      }
      done(result);
    });
  }

  forceFlush() {
    return this.inner.forceFlush();
  }

  shutdown() {
    return this.inner.shutdown();
  }
}

function report(span, parent) {
  const { traceId, spanId } = span.spanContext();
  const parentId = parent ? parent.spanContext().spanId : '';
  console.log(JSON.stringify({ trace: traceId, span: spanId, parent: parentId, name: span.name }));
}

/** GET /checkout -> (SELECT orders, POST /payments -> payments.Charge), through the active context. */
function checkout(tracer, i) {
  tracer.startActiveSpan('GET /checkout', { attributes: { 'http.route': '/checkout' } }, (root) => {
    tracer.startActiveSpan('SELECT orders', { attributes: { 'db.rows': i } }, (select) => {
      select.setAttribute('customer', `c-${i}`);
      report(select, root);
      select.end();
    });
    tracer.startActiveSpan('POST /payments', (post) => {
      tracer.startActiveSpan('payments.Charge', { attributes: { 'rpc.ok': true } }, (charge) => {
        report(charge, post);
        charge.end();
      });
      report(post, root);
      post.end();
    });
    report(root, null);
    root.end();
  });
}

async function main() {
  const provider = new NodeTracerProvider({
    resource: defaultResource().merge(detectResources({ detectors: [envDetector] })),
    spanProcessors: [new BatchSpanProcessor(new CountingExporter(new OTLPTraceExporter()))],
  });
  provider.register(); // the async-hooks context manager, so startActiveSpan nests
  const tracer = provider.getTracer('otrace.tests.js');
  const traces = Number(process.env.TRACES || '5');
  for (let i = 0; i < traces; i += 1) {
    checkout(tracer, i);
  }
  await provider.forceFlush();
  await provider.shutdown();
  process.exitCode = failedExports === 0 ? 0 : 1;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
