"""Generated traces are realistic and well formed; prebuilt requests get fresh trace ids."""

from __future__ import annotations

import random
from collections import Counter

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otrace.loadtest import TraceShape, build_pool, generate_trace
from otrace.loadtest._templates import round_mask
from otrace.loadtest._traces import CLIENT, CONSUMER, PRODUCER, SERVER


def test_traces_are_trees_across_services_with_kinds_errors_and_nesting() -> None:
    rnd = random.Random(5)
    shape = TraceShape(services=8, depth=4, attrs=12, error_rate=0.1)
    kinds: Counter[int] = Counter()
    services: set[str] = set()
    errors = total = 0
    for _ in range(300):
        _, spans = generate_trace(rnd, shape, 10**18)
        assert spans[0].parent == -1 and spans[0].kind == SERVER
        for i, span in enumerate(spans):
            kinds[span.kind] += 1
            services.add(span.service)
            errors += span.error
            total += 1
            assert len(span.attributes) == 12
            assert span.start_ns < span.end_ns
            if i:
                parent = spans[span.parent]
                assert span.parent < i
                assert parent.start_ns <= span.start_ns and span.end_ns <= parent.end_ns
                if parent.kind == CLIENT:
                    assert span.kind == SERVER and span.service != parent.service
                if parent.kind == PRODUCER:
                    assert span.kind == CONSUMER
    assert len(services) == 8 and set(kinds) == {1, 2, 3, 4, 5}
    assert 0.07 < errors / total < 0.13


def test_rounds_give_every_trace_a_new_id_and_keep_the_request_valid() -> None:
    template = build_pool(TraceShape(), 400, 400, seed=2)[0]
    seen: set[bytes] = set()
    for round_no in range(3):
        request = ExportTraceServiceRequest.FromString(template.with_mask(round_mask(77, round_no)))
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        assert len(spans) == template.spans
        ids = {s.trace_id for s in spans}
        assert len(ids) == template.traces and not ids & seen
        seen |= ids
        by_id = {(s.trace_id, s.span_id) for s in spans}
        for s in spans:  # parent links survive the rewrite
            assert not s.parent_span_id or (s.trace_id, s.parent_span_id) in by_id
