"""The ingest's fast validation (`query._wire.valid_spans`, C) against `validate`.

`valid_spans` may only ever say "every span passes" when `validate` says so too,
with the same count; everything else it leaves to `validate` (None). Limits here
are tiny so that generated requests sit on every side of every limit.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from collector._otlp import PROTOBUF, Limits, validate, validate_body
from query._wire import valid_spans
from tests.query.test_wire import SPAN, TRACE, field, request_of

SMALL = Limits(max_attributes=3, max_attribute_bytes=60, max_span_bytes=240, max_name_bytes=8)


def fast(body: bytes, limits: Limits = SMALL) -> int | None:
    return valid_spans(
        body,
        limits.max_attributes,
        limits.max_attribute_bytes,
        limits.max_span_bytes,
        limits.max_name_bytes,
    )


def slow(body: bytes, limits: Limits = SMALL) -> tuple[int, int]:
    checked = validate(ExportTraceServiceRequest.FromString(body), limits)
    return checked.accepted, checked.rejected


ids16 = st.sampled_from([TRACE, bytes(16), b"", TRACE[:8]]) | st.binary(max_size=17)
ids8 = st.sampled_from([SPAN, bytes(8), b""]) | st.binary(max_size=9)
names = st.text(max_size=10)


@st.composite
def attribute_lists(draw: st.DrawFn) -> list[KeyValue]:
    return [
        KeyValue(key=draw(st.text(max_size=3))) if draw(st.booleans()) else _string_kv(draw)
        for _ in range(draw(st.integers(0, 5)))
    ]


def _string_kv(draw: st.DrawFn) -> KeyValue:
    kv = KeyValue(key="k")
    kv.value.string_value = draw(st.text(max_size=70))
    return kv


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(draw(attribute_lists()))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(names)
            ss.scope.attributes.extend(draw(attribute_lists()))
            for _ in range(draw(st.integers(0, 3))):
                span = ss.spans.add(
                    trace_id=draw(ids16),
                    span_id=draw(ids8),
                    parent_span_id=draw(ids8),
                    name=draw(names),
                )
                span.attributes.extend(draw(attribute_lists()))
    return request


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_fast_answer_is_only_ever_all_valid_and_agrees(
    request: ExportTraceServiceRequest,
) -> None:
    body = request.SerializeToString()
    checked = validate(ExportTraceServiceRequest.FromString(body), SMALL)
    got = fast(body)
    assert got is None or (got, 0, "") == (checked.accepted, checked.rejected, checked.reason)
    if checked.reason == "" and all(
        len(rs.SerializeToString()) <= SMALL.max_attribute_bytes for rs in request.resource_spans
    ):
        assert got == checked.accepted  # nothing near a limit: the fast path must answer


def test_the_load_generators_requests_take_the_fast_path() -> None:
    from otrace.bench._loadgen import build_requests

    for body, spans in build_requests(1500, 500, 7):
        assert fast(body, Limits()) == spans
        request = ExportTraceServiceRequest.FromString(body)
        assert validate_body(body, PROTOBUF, request, Limits()).accepted == spans


def test_each_problem_is_left_to_validate_which_names_it() -> None:
    cases = {
        "trace_id must be 16 bytes": field(1, TRACE[:15]) + field(2, SPAN),
        "span_id must be 8 bytes and not all zero": field(1, TRACE) + field(2, bytes(8)),
        "parent_span_id must be empty or 8 bytes": field(1, TRACE)
        + field(2, SPAN)
        + field(4, b"x"),
        "name longer than 8 bytes": field(1, TRACE) + field(2, SPAN) + field(5, "ünïcødé".encode()),
        "more than 3 attributes": field(1, TRACE) + field(2, SPAN) + field(9, b"") * 4,
    }
    for reason, span in cases.items():
        body = request_of(span)
        assert fast(body) is None
        checked = validate_body(body, PROTOBUF, ExportTraceServiceRequest.FromString(body), SMALL)
        assert (checked.accepted, checked.rejected) == (0, 1)
        assert reason in checked.reason


def test_encodings_the_runtime_reads_differently_are_left_to_validate() -> None:
    # trace_id as a varint: the runtime keeps it as an unknown field, so the span has no
    # trace id and is rejected; read as a bytes field it would have passed.
    wrong_type = request_of(field(1, 5) + field(1, TRACE) + field(2, SPAN))
    assert fast(wrong_type) is None
    assert slow(wrong_type) == (1, 0)  # the last trace_id given is the bytes one
    odd = request_of(field(1, TRACE) + field(2, SPAN) + field(1, 5))
    assert fast(odd) is None and slow(odd) == (1, 0)  # 5 is unknown, TRACE still the id
    # A singular field given twice: the last one counts, as for the runtime.
    twice = request_of(field(1, bytes(16)) + field(1, TRACE) + field(2, SPAN))
    assert fast(twice) == 1 and slow(twice) == (1, 0)
    bad_last = request_of(field(1, TRACE) + field(1, bytes(16)) + field(2, SPAN))
    assert fast(bad_last) is None and slow(bad_last) == (0, 1)


def test_sizes_over_a_limit_on_the_wire_are_left_to_validate() -> None:
    big_value = field(1, b"k") + field(2, field(1, b"v" * 70))
    span = field(1, TRACE) + field(2, SPAN) + field(9, big_value)
    body = request_of(span)
    assert fast(body) is None
    assert slow(body) == (0, 1)  # an attribute value larger than 60 bytes
    resource = field(1, big_value)
    body = request_of(field(1, TRACE) + field(2, SPAN), resource=resource)
    assert fast(body) is None
    assert slow(body) == (0, 1)  # the resource is larger than 60 bytes
