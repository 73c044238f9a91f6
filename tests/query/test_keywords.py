"""Keywords of a span, and the covers that turn time and duration ranges into keywords."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from query._keywords import (
    duration_bucket,
    duration_cover,
    resource_keywords,
    span_keywords,
    span_predicate,
    time_cover,
)

MINUTE = 60 * 10**9


def _span() -> tuple[Resource, Span]:
    resource = Resource()
    resource.attributes.add(key="service.name").value.string_value = "checkout"
    resource.attributes.add(key="host.name").value.string_value = "node-7"
    resource.attributes.add(key="huge").value.string_value = "x" * 300
    span = Span(trace_id=bytes(range(16)), span_id=b"\x01" * 8, name="GET /cart")
    span.kind = Span.SPAN_KIND_SERVER
    span.status.code = Status.STATUS_CODE_ERROR
    span.attributes.add(key="http.status_code").value.int_value = 500
    span.attributes.add(key="retry").value.bool_value = True
    span.attributes.add(key="ratio").value.double_value = 0.25
    span.attributes.add(key="tags").value.array_value.values.add().string_value = "a"
    span.start_time_unix_nano = 1_700_000_000 * 10**9
    span.end_time_unix_nano = span.start_time_unix_nano + 150 * 10**6
    return resource, span


def test_a_span_is_indexed_under_every_documented_keyword() -> None:
    resource, span = _span()
    service, shared = resource_keywords(resource)
    words = span_keywords(shared, span)
    minute = 1_700_000_000 // 60
    assert service == "checkout"
    assert {
        "svc:checkout",
        "name:GET /cart",
        "trace:000102030405060708090a0b0c0d0e0f",
        "status:error",
        "kind:server",
        "attr:service.name=checkout",
        "attr:host.name=node-7",
        "attr:http.status_code=500",
        "attr:retry=true",
        "attr:ratio=0.25",
        f"t:m:{minute}",
        f"t:h:{minute // 60}",
        f"t:d:{minute // 1440}",
        "dur:0:18",  # 150 ms = 150000 us, bit length 18
        "dur:2:4",
        "dur:4:1",
    } == words
    # Arrays are not indexed; nor are values longer than 256 bytes.
    assert not any(w.startswith(("attr:tags", "attr:huge")) for w in words)


def test_a_resource_without_a_service_name_is_unknown_service() -> None:
    assert resource_keywords(Resource())[0] == "unknown_service"


@given(
    start=st.integers(0, 10**12),
    length=st.integers(0, 10 * 86400),
    probe=st.floats(0, 1),
)
def test_the_time_cover_holds_every_instant_of_the_range_and_stays_near_it(
    start: int, length: int, probe: float
) -> None:
    start_ns, end_ns = start * 10**9, (start + length) * 10**9
    cover = set(time_cover(start_ns, end_ns))
    instant = start_ns + round(probe * (end_ns - start_ns))
    minute = instant // MINUTE
    assert {f"t:m:{minute}", f"t:h:{minute // 60}", f"t:d:{minute // 1440}"} & cover
    # Nothing outside the minutes the range touches.
    lo, hi = start_ns // MINUTE, end_ns // MINUTE
    for word in cover:
        _, unit, index = word.split(":")
        size = {"m": 1, "h": 60, "d": 1440}[unit]
        assert lo <= int(index) * size and (int(index) + 1) * size - 1 <= hi
    # Coarse units keep it short: at most 2x(59 + 23) edges plus the whole days.
    assert len(cover) <= 2 * (59 + 23) + length // 86400 + 1


@given(low=st.integers(0, 10**13), high=st.integers(0, 10**13), probe=st.floats(0, 1))
def test_the_duration_cover_holds_every_duration_in_the_range(
    low: int, high: int, probe: float
) -> None:
    low, high = min(low, high), max(low, high)
    cover = set(duration_cover(low, high))
    b = duration_bucket(low + round(probe * (high - low)))
    assert {f"dur:0:{b}", f"dur:2:{b >> 2}", f"dur:4:{b >> 4}"} & cover
    assert duration_cover(high + 1, high) == []


_NAMES = st.sampled_from(["a", "a=b", "k", "k=", "=", "http.route", "x" * 260])
_VALUES = st.one_of(
    st.text(max_size=5), st.integers(-3, 3), st.booleans(), st.sampled_from(["1", "true", "=v"])
)


@given(
    attrs=st.lists(st.tuples(_NAMES, _VALUES), max_size=5),
    name=st.sampled_from(["GET /", "a=b", ""]),
    kind=st.integers(0, 5),
    status=st.integers(0, 2),
    start=st.integers(0, 10**18),
    duration=st.integers(0, 10**12),
    probes=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
)
def test_span_predicates_agree_with_the_span_keywords(
    attrs: list[tuple[str, str | int | bool]],
    name: str,
    kind: int,
    status: int,
    start: int,
    duration: int,
    probes: list[tuple[str, str | int | bool]],
) -> None:
    """The search filter's fast path says yes exactly for the span's own keywords."""
    span = Span(trace_id=bytes(range(16)), span_id=b"\x01" * 8, name=name, kind=kind)
    span.status.code = status
    span.start_time_unix_nano, span.end_time_unix_nano = start, start + duration
    for key, value in attrs:
        _set(span.attributes.add(key=key).value, value)
    own = span_keywords((), span)
    other = Span(name="other", trace_id=b"\x02" * 16, start_time_unix_nano=7, end_time_unix_nano=9)
    for key, value in probes:
        _set(other.attributes.add(key=key).value, value)
    candidates = own | span_keywords((), other) | {"svc:checkout", "attr:a", "bogus"}
    for word in candidates:
        assert span_predicate(word)(span) == (word in own), word


def _set(value: AnyValue, raw: str | int | bool) -> None:
    if isinstance(raw, bool):
        value.bool_value = raw
    elif isinstance(raw, int):
        value.int_value = raw
    else:
        value.string_value = raw
