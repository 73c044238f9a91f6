"""The keywords a span is found by, and the covers that turn ranges into keywords.

Every span is indexed under:

    svc:<service.name>          name:<span name>           trace:<32 hex digits>
    status:<unset|ok|error>     kind:<internal|server|...>
    attr:<key>=<value>          (resource and span attributes; scalar values only)
    t:m:<minute>  t:h:<hour>  t:d:<day>                    (start time, Unix epoch)
    dur:0:<b>  dur:2:<b>>2>  dur:4:<b>>4>                  (b = bit length of duration in us)

Time and duration are hierarchical: a range is covered by the coarsest units
that fit inside it plus finer units at its edges (`time_cover`,
`duration_cover`), so a range query is a union of a few keywords, then exact
filtering inside the enclave. Attribute values rendered longer than
`MAX_INDEXED_VALUE` characters (code points), and attributes the operator lists as
unindexed, are stored but not indexed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = [
    "MAX_INDEXED_VALUE",
    "UNKNOWN_SERVICE",
    "attr_keyword",
    "duration_cover",
    "name_keyword",
    "render_value",
    "resource_keywords",
    "service_keyword",
    "service_of",
    "span_keyword_list",
    "span_keywords",
    "span_predicate",
    "time_cover",
    "trace_keyword",
]

MAX_INDEXED_VALUE = 256
UNKNOWN_SERVICE = "unknown_service"
_MINUTE_NS = 60 * 10**9
_TIME_UNITS = (("d", 1440), ("h", 60), ("m", 1))  # in minutes
_DURATION_UNITS = (("4", 16), ("2", 4), ("0", 1))  # in log2 buckets
_STATUS: dict[int, str] = {
    Status.STATUS_CODE_UNSET: "unset",
    Status.STATUS_CODE_OK: "ok",
    Status.STATUS_CODE_ERROR: "error",
}
_KIND: dict[int, str] = {
    Span.SPAN_KIND_UNSPECIFIED: "unspecified",
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}


def service_keyword(service: str) -> str:
    return f"svc:{service}"


def name_keyword(name: str) -> str:
    return f"name:{name}"


def trace_keyword(trace_id: bytes) -> str:
    return f"trace:{trace_id.hex()}"


def attr_keyword(key: str, value: str) -> str:
    return f"attr:{key}={value}"


def status_keyword(code: int) -> str:
    return f"status:{_STATUS.get(code, 'unset')}"


def kind_keyword(kind: int) -> str:
    return f"kind:{_KIND.get(kind, 'unspecified')}"


_STATUS_WORDS = {code: status_keyword(code) for code in _STATUS}
_KIND_WORDS = {kind: kind_keyword(kind) for kind in _KIND}


def render_value(value: AnyValue) -> str | None:
    """A scalar attribute value as users type it (`500`, `true`, `GET`); None otherwise."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return str(value.int_value)
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which == "double_value":
        return repr(value.double_value)
    return None


def _attribute_keywords(attributes: Iterable[KeyValue], skip: frozenset[str]) -> list[str]:
    """`attr_keyword(key, render_value(value))` for each indexed attribute (the f-string
    inline: this runs for every attribute of every span at ingest)."""
    out = []
    for kv in attributes:
        key = kv.key
        if key in skip:
            continue
        rendered = render_value(kv.value)
        if rendered is not None and len(rendered) <= MAX_INDEXED_VALUE:
            out.append(f"attr:{key}={rendered}")
    return out


def service_of(resource: Resource) -> str:
    for kv in resource.attributes:
        if kv.key == "service.name" and kv.value.WhichOneof("value") == "string_value":
            return kv.value.string_value or UNKNOWN_SERVICE
    return UNKNOWN_SERVICE


def resource_keywords(
    resource: Resource, skip: frozenset[str] = frozenset()
) -> tuple[str, list[str]]:
    """(service name, the keywords every span of this resource shares); attributes whose
    key is in `skip` are not indexed (operators' choice, like Jaeger's tag deny-list)."""
    service = service_of(resource)
    return service, [service_keyword(service), *_attribute_keywords(resource.attributes, skip)]


def span_keywords(
    shared: Sequence[str], span: Span, skip: frozenset[str] = frozenset()
) -> frozenset[str]:
    """Every keyword of one span, given its resource's shared keywords."""
    return frozenset(span_keyword_list(shared, span, skip))


def span_keyword_list(
    shared: Sequence[str], span: Span, skip: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """`span_keywords` as a tuple that may repeat a keyword (ingest unions them per block)."""
    start = span.start_time_unix_nano
    return (
        *shared,
        name_keyword(span.name),
        trace_keyword(span.trace_id),
        _STATUS_WORDS.get(span.status.code, "status:unset"),
        _KIND_WORDS.get(span.kind, "kind:unspecified"),
        *_attribute_keywords(span.attributes, skip),
        *_time_words(start // _MINUTE_NS),
        *_duration_words(duration_bucket(span.end_time_unix_nano - start)),
    )


def span_predicate(keyword: str) -> Callable[[Span], bool]:
    """Whether a span's own keywords (those `span_keywords((), span)` gives) include
    `keyword`, decided without building them all: the search filter's fast path."""
    prefix = keyword.partition(":")[0]
    if prefix == "svc":
        return lambda span: False  # a resource keyword only
    if prefix == "attr":
        return lambda span: _has_attribute(span.attributes, keyword)
    if prefix == "name":
        return lambda span: name_keyword(span.name) == keyword
    if prefix == "trace":
        return lambda span: trace_keyword(span.trace_id) == keyword
    if prefix == "status":
        return lambda span: _STATUS_WORDS.get(span.status.code, "status:unset") == keyword
    if prefix == "kind":
        return lambda span: _KIND_WORDS.get(span.kind, "kind:unspecified") == keyword
    if prefix == "t":
        return lambda span: keyword in _time_words(span.start_time_unix_nano // _MINUTE_NS)
    if prefix == "dur":
        return lambda span: (
            keyword
            in _duration_words(duration_bucket(span.end_time_unix_nano - span.start_time_unix_nano))
        )
    return lambda span: keyword in span_keywords((), span)


def _has_attribute(attributes: Iterable[KeyValue], keyword: str) -> bool:
    """`attr:<key>=<value>` among the attributes, comparing only keys that fit."""
    for kv in attributes:
        cut = 5 + len(kv.key)  # len("attr:") + key
        if keyword.startswith(kv.key, 5) and keyword[cut : cut + 1] == "=":
            rendered = render_value(kv.value)
            if (
                rendered is not None
                and len(rendered) <= MAX_INDEXED_VALUE
                and keyword[cut + 1 :] == rendered
            ):
                return True
    return False


@functools.lru_cache(maxsize=4096)
def _time_words(minute: int) -> tuple[str, ...]:
    return tuple(f"t:{label}:{minute // size}" for label, size in _TIME_UNITS)


@functools.lru_cache(maxsize=128)
def _duration_words(bucket: int) -> tuple[str, ...]:
    return tuple(f"dur:{label}:{bucket // size}" for label, size in _DURATION_UNITS)


def duration_bucket(duration_ns: int) -> int:
    """Log-scale bucket: b holds durations in [2^(b-1), 2^b) microseconds (0 for < 1 us)."""
    return max(0, duration_ns // 1000).bit_length()


def time_cover(start_ns: int, end_ns: int) -> list[str]:
    """Keywords whose union holds every span starting in [start_ns, end_ns] (and a few more)."""
    if end_ns < start_ns:
        return []
    lo, hi = start_ns // _MINUTE_NS, end_ns // _MINUTE_NS + 1
    return [f"t:{label}:{index}" for label, index in _cover(lo, hi, _TIME_UNITS)]


def duration_cover(min_ns: int, max_ns: int) -> list[str]:
    """Keywords whose union holds every span lasting between min_ns and max_ns."""
    if max_ns < min_ns:
        return []
    lo, hi = duration_bucket(min_ns), duration_bucket(max_ns) + 1
    return [f"dur:{label}:{index}" for label, index in _cover(lo, hi, _DURATION_UNITS)]


def _cover(lo: int, hi: int, units: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Covers [lo, hi) (in the finest unit) with whole coarse units inside, finer at the edges."""
    if lo >= hi:
        return []
    (label, size), finer = units[0], units[1:]
    if not finer:
        return [(label, i) for i in range(lo, hi)]
    first, last = -(-lo // size), hi // size  # whole coarse units inside [lo, hi)
    if first >= last:
        return _cover(lo, hi, finer)
    return [
        *_cover(lo, first * size, finer),
        *((label, i) for i in range(first, last)),
        *_cover(last * size, hi, finer),
    ]
