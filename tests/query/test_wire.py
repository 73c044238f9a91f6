"""`query._wire` (the epoch builder's C request splitter) against the protobuf runtime.

Where the splitter answers, its records must be the runtime path's: same ids,
keywords (in order), start time and operation, and a payload that parses to the
same `ResourceSpans` (byte for byte on requests the runtime serialized). Where
it cannot, it answers None and `records_from_body` takes the runtime path.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from query import _blocks
from query._blocks import SpanRecord, records_from_body, records_from_request
from query._keywords import MAX_INDEXED_VALUE

wire = _blocks._wire


def test_the_splitter_is_built_by_the_install() -> None:
    # pyproject.toml builds it; without it every epoch pays ~4x the CPU per span.
    assert wire is not None


def split(body: bytes, skip: frozenset[str] = frozenset()) -> list[SpanRecord] | None:
    assert wire is not None
    out: list[SpanRecord] | None = wire.split_request(body, skip, MAX_INDEXED_VALUE, SpanRecord)
    return out


def reference(body: bytes, skip: frozenset[str] = frozenset()) -> list[SpanRecord]:
    return records_from_request(ExportTraceServiceRequest.FromString(body), skip)


def assert_same(got: list[SpanRecord], want: list[SpanRecord], *, same_bytes: bool = True) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.trace_id, g.span_id, g.start_ns, g.operation) == (
            w.trace_id,
            w.span_id,
            w.start_ns,
            w.operation,
        )
        assert g.keywords == w.keywords
        assert ResourceSpans.FromString(g.payload) == ResourceSpans.FromString(w.payload)
        if same_bytes:
            assert g.payload == w.payload


# ------------------------------------------------------------ generated requests

texts = st.text(max_size=12) | st.text(min_size=250, max_size=262)  # around the index limit
keys = st.sampled_from(["service.name", "http.method", "user.id", "k", "", "ключ"]) | st.text(
    max_size=6
)


@st.composite
def any_values(draw: st.DrawFn) -> AnyValue | None:
    kind = draw(st.sampled_from(["str", "int", "bool", "double", "bytes", "array", "kv", "none"]))
    if kind == "none":
        return None
    value = AnyValue()
    if kind == "str":
        value.string_value = draw(texts)
    elif kind == "int":
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "bool":
        value.bool_value = draw(st.booleans())
    elif kind == "double":
        value.double_value = draw(st.floats(allow_nan=True) | st.sampled_from([-0.0, 1e300]))
    elif kind == "bytes":
        value.bytes_value = draw(st.binary(max_size=8))
    elif kind == "array":
        value.array_value.values.add(string_value="a")
    else:
        value.kvlist_value.values.add(key="a", value=AnyValue(int_value=1))
    return value


@st.composite
def attributes(draw: st.DrawFn) -> list[KeyValue]:
    out = []
    for _ in range(draw(st.integers(0, 6))):
        value = draw(any_values())
        kv = KeyValue(key=draw(keys))
        if value is not None:
            kv.value.CopyFrom(value)
        out.append(kv)
    return out


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 3))):
        rs = request.resource_spans.add()
        if draw(st.booleans()):
            rs.resource.attributes.extend(draw(attributes()))
        rs.schema_url = draw(st.sampled_from(["", "https://opentelemetry.io/schemas/1.21.0"]))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            if draw(st.booleans()):
                ss.scope.name = draw(texts)
            ss.schema_url = draw(st.sampled_from(["", "s"]))
            for _ in range(draw(st.integers(0, 3))):
                start = draw(st.integers(0, 2**64 - 1))
                span = ss.spans.add(
                    trace_id=draw(st.binary(min_size=16, max_size=16) | st.binary(max_size=20)),
                    span_id=draw(st.binary(min_size=8, max_size=8)),
                    name=draw(texts),
                    kind=draw(st.integers(-2, 7)),
                    start_time_unix_nano=start,
                    end_time_unix_nano=draw(
                        st.integers(0, 2**64 - 1) | st.just(min(start + 1500, 2**64 - 1))
                    ),
                )
                span.attributes.extend(draw(attributes()))
                if draw(st.booleans()):
                    span.status.code = draw(st.integers(-1, 4))  # type: ignore[assignment]
                    span.status.message = draw(texts)
                if draw(st.booleans()):
                    span.events.add(name="e", time_unix_nano=1)
    return request


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sets(keys, max_size=2))
def test_generated_requests_split_as_the_runtime_splits_them(
    request: ExportTraceServiceRequest, skip: set[str]
) -> None:
    body = request.SerializeToString()
    got = split(body, frozenset(skip))
    assert got is not None
    assert_same(got, reference(body, frozenset(skip)))


def test_the_load_generators_requests_are_split_byte_for_byte() -> None:
    from otrace.bench._loadgen import build_requests

    for body, spans in build_requests(1500, 500, 7):
        got = split(body, frozenset({"user.id"}))
        assert got is not None and len(got) == spans
        assert_same(got, reference(body, frozenset({"user.id"})))


# ------------------------------------------------------- encodings SDKs do not emit


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes | int, wire_type: int | None = None) -> bytes:
    """One protobuf field: bytes are length-delimited, ints varints, unless told."""
    if isinstance(payload, int):
        wire_type = 0 if wire_type is None else wire_type
        if wire_type == 1:
            return varint(number << 3 | 1) + struct.pack("<Q", payload)
        return varint(number << 3 | wire_type) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def request_of(span: bytes, resource: bytes = b"", scope: bytes = b"") -> bytes:
    rs = field(1, resource) + field(2, field(1, scope) + field(2, span))
    return field(1, rs)


TRACE, SPAN = bytes(range(1, 17)), bytes(range(1, 9))
KV_GET = field(1, b"http.method") + field(2, field(1, b"GET"))


def test_fields_out_of_order_and_unknown_fields_split_as_the_runtime_reads_them() -> None:
    span = (
        field(99, b"unknown")  # unknown fields are kept in the payload
        + field(9, KV_GET)
        + field(8, 2_000_000, 1)
        + field(7, 1_000_000, 1)
        + field(5, b"first name")
        + field(5, b"GET /")  # a singular field given twice: the last wins
        + field(2, SPAN)
        + field(1, TRACE)
        + field(6, 2)
    )
    resource = field(7, b"?") + field(1, field(1, b"service.name") + field(2, field(1, b"api")))
    body = request_of(span, resource, scope=field(1, b"lib") + field(50, 1))
    got = split(body)
    assert got is not None
    assert_same(got, reference(body), same_bytes=False)
    assert got[0].operation == ("api", "GET /")
    assert "attr:http.method=GET" in got[0].keywords and "kind:server" in got[0].keywords


def test_an_attribute_value_with_two_members_takes_the_last_as_the_runtime_does() -> None:
    value = field(1, b"text") + field(3, 42)  # string_value, then int_value
    span = field(1, TRACE) + field(2, SPAN) + field(9, field(1, b"n") + field(2, value))
    body = request_of(span)
    got = split(body)
    assert got is not None
    assert_same(got, reference(body), same_bytes=False)
    assert "attr:n=42" in got[0].keywords


@pytest.mark.parametrize(
    ("case", "body"),
    [
        # a singular message given twice is merged by the runtime
        ("resource twice", field(1, field(1, b"") + field(1, b"") + field(2, field(2, b"")))),
        ("status twice", request_of(field(15, field(3, 1)) + field(15, field(2, b"m")))),
        ("value twice", request_of(field(9, field(1, b"k") + field(2, b"") + field(2, b"")))),
        # a known field with another wire type is an unknown field to the runtime
        ("trace id as a varint", request_of(field(1, 7))),
        ("kind as bytes", request_of(field(6, b"\x01"))),
        ("a group", request_of(field(1, TRACE) + varint(20 << 3 | 3) + varint(20 << 3 | 4))),
    ],
)
def test_encodings_the_splitter_leaves_to_the_runtime(case: str, body: bytes) -> None:
    assert split(body) is None, case
    # and records_from_body still answers, through the runtime
    assert_same(records_from_body(body), reference(body))


def test_text_that_is_not_utf8_is_left_to_the_runtime_which_refuses_it() -> None:
    body = request_of(field(1, TRACE) + field(5, b"\xff\xfe"))
    assert split(body) is None
    with pytest.raises(DecodeError):
        records_from_body(body)


@pytest.mark.parametrize(
    "body",
    [
        field(1, b"")[:-1] + b"\x05",  # a length past the end
        b"\x0a",  # a tag without its length
        b"\x0a\x80",  # a truncated varint
        b"\x0a\x02\x12\xff",  # a nested length past its message
        varint(1 << 3 | 2) + b"\xff" * 10 + b"\x02",  # an 11-byte varint
        b"\x00\x01",  # field number 0
        varint(1 << 3 | 7),  # wire type 7
    ],
)
def test_malformed_bytes_get_none_never_a_crash(body: bytes) -> None:
    assert split(body) is None
    with pytest.raises(DecodeError):
        records_from_body(body)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_and_agree_when_both_parse(body: bytes) -> None:
    got = split(body)
    try:
        want = reference(body)
    except DecodeError:
        return  # nothing that reaches the builder (the ingest parsed it first)
    if got is not None:
        assert_same(got, want, same_bytes=False)


def test_duration_and_time_words_at_the_edges() -> None:
    edges = [(0, 0), (10, 5), (0, 2**64 - 1), (2**64 - 1, 2**64 - 1), (59_999_999_999, 6 * 10**10)]
    for start, end in edges:
        span = field(1, TRACE) + field(2, SPAN) + field(7, start, 1) + field(8, end, 1)
        body = request_of(span)
        got = split(body)
        assert got is not None
        assert_same(got, reference(body), same_bytes=False)  # zeros written out


def test_a_double_attribute_is_rendered_as_python_writes_it() -> None:
    for value in (0.1, -0.0, math.inf, math.nan, 1e22, 5e-324):
        kv = KeyValue(key="d", value=AnyValue(double_value=value))
        request = ExportTraceServiceRequest()
        request.resource_spans.add().scope_spans.add().spans.add(
            trace_id=TRACE, span_id=SPAN, kind=Span.SPAN_KIND_CLIENT, attributes=[kv]
        )
        body = request.SerializeToString()
        got = split(body)
        assert got is not None
        assert f"attr:d={value!r}" in got[0].keywords
        assert_same(got, reference(body))


# string_value_strindex (AnyValue field 8, an int32 member of the oneof): set last,
# the runtime renders no value; under a schema without it, the field is unknown.
SERVICE_THEN_STRINDEX = field(1, b"service.name") + field(2, field(1, b"api") + field(8, 1))


@pytest.mark.parametrize(
    ("value", "resource"),
    [
        pytest.param(field(1, b"GET") + field(8, 3), b"", id="strindex after a string"),
        pytest.param(field(3, 128) + field(8, 3), b"", id="strindex after an int"),
        pytest.param(field(8, 3) + field(1, b"GET"), b"", id="a string after strindex"),
        pytest.param(field(1, b"GET"), field(1, SERVICE_THEN_STRINDEX), id="service.name"),
    ],
)
def test_an_attribute_value_member_the_splitter_does_not_know_is_left_to_the_runtime(
    value: bytes, resource: bytes
) -> None:
    span = field(1, TRACE) + field(2, SPAN) + field(9, field(1, b"k") + field(2, value))
    body = request_of(span, resource)
    got = split(body)
    if got is not None:
        assert_same(got, reference(body), same_bytes=False)
    assert_same(records_from_body(body), reference(body), same_bytes=False)


def test_max_value_bounds_every_rendered_value(monkeypatch: pytest.MonkeyPatch) -> None:
    import query._keywords

    monkeypatch.setattr(query._keywords, "MAX_INDEXED_VALUE", 4)
    kvs = [
        KeyValue(key="s", value=AnyValue(string_value="ab€d")),  # 4 code points, 6 bytes
        KeyValue(key="s", value=AnyValue(string_value="abcde")),
        KeyValue(key="i", value=AnyValue(int_value=1234)),
        KeyValue(key="i", value=AnyValue(int_value=-1234)),
        KeyValue(key="b", value=AnyValue(bool_value=True)),
        KeyValue(key="b", value=AnyValue(bool_value=False)),
        KeyValue(key="d", value=AnyValue(double_value=0.5)),
        KeyValue(key="d", value=AnyValue(double_value=0.125)),
    ]
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=TRACE, span_id=SPAN, attributes=kvs
    )
    body = request.SerializeToString()
    assert wire is not None
    got = wire.split_request(body, frozenset(), 4, SpanRecord)
    assert got is not None
    assert_same(got, reference(body))
    assert [w for w in got[0].keywords if w.startswith("attr:")] == [
        "attr:s=ab€d",
        "attr:i=1234",
        "attr:b=true",
        "attr:d=0.5",
    ]


def test_a_record_type_is_instantiated_through_its_own_new() -> None:
    # In a child: a crash here must fail the test, not end the run. Only the .so is
    # loaded (no package import) to keep it fast.
    assert wire is not None
    code = f"""
import gc, importlib.machinery, importlib.util
loader = importlib.machinery.ExtensionFileLoader("query._wire", {wire.__file__!r})
wire = importlib.util.module_from_spec(importlib.util.spec_from_loader("query._wire", loader))
loader.exec_module(wire)
kept = []
for record in (type, int, tuple):
    try:
        kept.append(wire.split_request({request_of(field(1, TRACE))!r}, frozenset(), 8, record))
    except (TypeError, AttributeError):
        pass
gc.collect()  # a half-made instance (a class without a name) fails when walked
print("survived")
"""
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (child.returncode, child.stdout) == (0, "survived\n"), child.stderr[-500:]
