"""`otrace loadtest`: drive an OTLP endpoint with realistic traces, then read a sample back.

    config = LoadConfig(Endpoint("127.0.0.1:4317"), rate=20_000, duration_s=30)
    report = run_load(config)                      # counts, latencies, the ledger's sample
    result = verify_traces(query_client, report.sample)   # lost / corrupt spans

Pieces, in the order a request meets them: `_traces` (span trees as specs),
`_templates` (prebuilt serialized requests, fresh trace ids per round),
`_worker` (spawned processes, paced sender threads), `_transport` (one attempt
over gRPC or HTTP) and `_retry` (when to retry, how long to wait), `_tally`
(counts), `_ledger` (what is remembered for verification), `_run` (the
orchestration), `_verify` (read-back), `_sink` (a counting no-op endpoint),
`_sdk` (the same traces through the OpenTelemetry SDK exporters).
"""

from otrace.loadtest._config import LoadConfig
from otrace.loadtest._histogram import LatencyHistogram
from otrace.loadtest._ledger import AckLedger, ExpectedTrace, span_digest
from otrace.loadtest._retry import Attempt, RetryPolicy
from otrace.loadtest._run import LiveStats, LoadReport, run_load
from otrace.loadtest._sink import OtlpSink, Refusal, SinkCounts
from otrace.loadtest._tally import Tally
from otrace.loadtest._templates import build_pool, sample_key
from otrace.loadtest._traces import SpanSpec, TraceShape, generate_trace
from otrace.loadtest._transport import Endpoint
from otrace.loadtest._verify import TraceCheck, TraceSource, VerifyReport, verify_traces

__all__ = [
    "AckLedger",
    "Attempt",
    "Endpoint",
    "ExpectedTrace",
    "LatencyHistogram",
    "LiveStats",
    "LoadConfig",
    "LoadReport",
    "OtlpSink",
    "Refusal",
    "RetryPolicy",
    "SinkCounts",
    "SpanSpec",
    "Tally",
    "TraceCheck",
    "TraceShape",
    "TraceSource",
    "VerifyReport",
    "build_pool",
    "generate_trace",
    "run_load",
    "sample_key",
    "span_digest",
    "verify_traces",
]
