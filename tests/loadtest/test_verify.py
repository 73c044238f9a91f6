"""Read-back verification against an in-memory trace store, and the ledger behind it."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from otrace.loadtest import AckLedger, ExpectedTrace, TraceShape, build_pool, verify_traces
from otrace.loadtest._ledger import merge_samples
from otrace.loadtest._templates import RequestTemplate, round_mask, sample_key


class FakeStore:
    """A `TraceSource` over whatever requests it was given, optionally arriving late."""

    def __init__(self, *bodies: bytes, visible_after: int = 0) -> None:
        self._data = TracesData()
        for body in bodies:
            self._data.resource_spans.extend(
                ExportTraceServiceRequest.FromString(body).resource_spans
            )
        self._hidden_calls = visible_after
        self.calls = 0

    def get_trace(self, trace_id: bytes) -> TracesData:
        self.calls += 1
        out = TracesData()
        if self.calls <= self._hidden_calls:
            return out
        for rs in self._data.resource_spans:
            spans = [s for ss in rs.scope_spans for s in ss.spans if s.trace_id == trace_id]
            if spans:
                out.resource_spans.add(resource=rs.resource).scope_spans.add().spans.extend(spans)
        return out

    def spans(self) -> list:  # type: ignore[type-arg]
        return [s for rs in self._data.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def drop(self, span_id: bytes) -> None:
        for rs in self._data.resource_spans:
            for ss in rs.scope_spans:
                for i, span in enumerate(ss.spans):
                    if span.span_id == span_id:
                        del ss.spans[i]
                        return
        raise AssertionError("no such span")


def _sent(limit: int | None = None) -> tuple[RequestTemplate, int, bytes, list[ExpectedTrace]]:
    template = build_pool(TraceShape(), 300, 300, seed=11)[0]
    mask = round_mask(99, 4)
    body = template.with_mask(mask)
    ledger = AckLedger(limit)
    for trace in range(template.traces):
        spans = list(template.trace_spans(body, trace))
        ledger.record(spans[0][1][2:18], spans)
    return template, mask, body, ledger.sample()


def test_everything_present_and_intact_verifies() -> None:
    _, _, body, sample = _sent()
    result = verify_traces(FakeStore(body), sample, wait_s=0)
    assert result.ok and result.verified_traces == len(sample) > 10
    assert (result.lost_spans, result.corrupt_spans) == (0, 0)


def test_a_missing_span_is_lost() -> None:
    _, _, body, sample = _sent()
    store = FakeStore(body)
    victim = sample[3].spans[1][0]
    store.drop(victim)
    result = verify_traces(store, sample, wait_s=0)
    assert not result.ok
    assert (result.lost_spans, result.corrupt_spans) == (1, 0)
    assert result.verified_traces == len(sample) - 1
    assert victim.hex() in result.problems()[0]


def test_a_changed_attribute_is_corrupt() -> None:
    _, _, body, sample = _sent()
    store = FakeStore(body)
    target = sample[0].spans[0][0]
    span = next(s for s in store.spans() if s.span_id == target)
    span.attributes[1].value.string_value += "x"
    result = verify_traces(store, sample, wait_s=0)
    assert (result.lost_spans, result.corrupt_spans) == (0, 1)
    assert "1 corrupt" in result.problems()[0]


def test_a_whole_trace_missing_counts_all_its_spans() -> None:
    sample = _sent()[3]
    result = verify_traces(FakeStore(), sample[:2], wait_s=0)
    assert result.lost_spans == len(sample[0].spans) + len(sample[1].spans)
    assert result.verified_traces == 0


def test_late_spans_are_waited_for() -> None:
    _, _, body, sample = _sent()
    store = FakeStore(body, visible_after=len(sample))  # the first pass sees nothing
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    result = verify_traces(store, sample, wait_s=5, clock=lambda: now[0], sleep=sleep)
    assert result.ok and now[0] == 0.5
    gave_up = verify_traces(
        FakeStore(body, visible_after=10**6), sample, wait_s=2, clock=lambda: now[0], sleep=sleep
    )
    assert gave_up.lost_spans == sum(len(t.spans) for t in sample)


def test_duplicates_and_unsampled_spans_are_not_errors() -> None:
    _, _, body, sample = _sent(limit=5)
    result = verify_traces(FakeStore(body, body), sample, wait_s=0)  # every span stored twice
    assert result.ok and result.verified_traces == 5


def test_ledger_keeps_the_smallest_keys_and_merges_exactly() -> None:
    template, mask, body, everything = _sent()
    keys = sorted(sample_key(t.trace_id) for t in everything)
    assert [t.key for t in everything] == keys
    assert list(template.keys(mask)) == [sample_key(t) for t in _trace_ids(template, body)]
    _, _, _, five = _sent(limit=5)
    assert [t.key for t in five] == keys[:5]
    halves = [everything[::2], everything[1::2]]
    assert merge_samples(halves, 7) == everything[:7]


def _trace_ids(template: RequestTemplate, body: bytes) -> list[bytes]:
    return [next(template.trace_spans(body, i))[1][2:18] for i in range(template.traces)]
