"""OTLP trace requests: decoding (protobuf or OTLP/JSON) and validation, inside the enclave.

A request that cannot be decoded is refused whole (INVALID_ARGUMENT / 400).
Spans that decode but break a limit (id lengths, attribute counts and sizes,
span size) are dropped one by one and counted in `partial_success`; the rest
are kept (OTLP specification, "Partial Success").
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otrace.errors import InvalidRequest
from query._wire import valid_spans

__all__ = ["Limits", "ValidatedRequest", "decode_request", "validate", "validate_body"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-span limits; a span over any of them is rejected, not truncated."""

    max_attributes: int = 128
    max_attribute_bytes: int = 64 << 10
    max_span_bytes: int = 1 << 20
    max_name_bytes: int = 4096


@dataclass(frozen=True, slots=True)
class ValidatedRequest:
    """The spans kept, as one request, and what was rejected."""

    request: ExportTraceServiceRequest
    accepted: int
    rejected: int
    reason: str


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """Parses an Export body; raises `InvalidRequest` with a reason the client can act on."""
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError) as exc:
            raise InvalidRequest(f"malformed OTLP protobuf: {exc}") from None
        return request
    if content_type == JSON:
        return _decode_json(body)
    raise InvalidRequest(f"unsupported content type {content_type!r}: use {PROTOBUF} or {JSON}")


def _decode_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"malformed OTLP/JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("malformed OTLP/JSON: the body must be an object")
    try:
        for holder in _id_holders(document):
            for name in _ID_FIELDS:
                value = holder.get(name)
                if isinstance(value, str):
                    # OTLP/JSON writes ids in hex; protobuf's JSON mapping wants base64.
                    holder[name] = base64.b64encode(bytes.fromhex(value)).decode()
        request = ExportTraceServiceRequest()
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
        return request
    except (ValueError, TypeError, AttributeError, binascii.Error, json_format.ParseError) as exc:
        raise InvalidRequest(f"malformed OTLP/JSON: {exc}") from None


def _id_holders(document: dict[str, object]) -> Iterator[dict[str, object]]:
    for rs in _objects(document.get("resourceSpans", document.get("resource_spans"))):
        for ss in _objects(rs.get("scopeSpans", rs.get("scope_spans"))):
            for span in _objects(ss.get("spans")):
                yield span
                yield from _objects(span.get("links"))


def _objects(value: object) -> list[dict[str, object]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidRequest("malformed OTLP/JSON: expected a list of objects")
    return value


def validate(request: ExportTraceServiceRequest, limits: Limits) -> ValidatedRequest:
    """Drops invalid spans in place and reports how many were kept and why others were not."""
    accepted = rejected = 0
    reasons: dict[str, int] = {}
    for rs in request.resource_spans:
        # Every span record carries its resource and scope, so their size bounds
        # what one request can cost the epoch: an oversize one rejects its spans.
        if (problem := _context_problem(rs.resource, "resource", limits)) is not None:
            dropped = sum(len(ss.spans) for ss in rs.scope_spans)
            rejected += dropped
            reasons[problem] = reasons.get(problem, 0) + dropped
            del rs.scope_spans[:]
            continue
        for ss in rs.scope_spans:
            if (problem := _context_problem(ss.scope, "scope", limits)) is not None:
                rejected += len(ss.spans)
                reasons[problem] = reasons.get(problem, 0) + len(ss.spans)
                del ss.spans[:]
                continue
            keep = []
            for span in ss.spans:
                problem = _span_problem(span, limits)
                if problem is None:
                    keep.append(span)
                else:
                    reasons[problem] = reasons.get(problem, 0) + 1
            if len(keep) != len(ss.spans):
                rejected += len(ss.spans) - len(keep)
                kept = [Span.FromString(s.SerializeToString()) for s in keep]
                del ss.spans[:]
                ss.spans.extend(kept)
            accepted += len(keep)
    reason = "; ".join(f"{n} span(s): {why}" for why, n in sorted(reasons.items()))
    return ValidatedRequest(request, accepted, rejected, reason)


def validate_body(
    body: bytes, content_type: str, request: ExportTraceServiceRequest, limits: Limits
) -> ValidatedRequest:
    """`validate(request, limits)` for the request decoded from `body`. A protobuf request
    whose spans certainly all pass is answered off the wire (`query._wire.valid_spans`,
    C): the Python checks were ~6 us a span of the ingest ecall, which shares the
    enclave's GIL with the ORAM writer while Exports wait for it. Anything else (a span
    with a problem, sizes near a limit, an unusual encoding) goes to `validate`."""
    if content_type == PROTOBUF:
        count = valid_spans(
            body,
            limits.max_attributes,
            limits.max_attribute_bytes,
            limits.max_span_bytes,
            limits.max_name_bytes,
        )
        if count is not None:
            return ValidatedRequest(request, count, 0, "")
    return validate(request, limits)


def _context_problem(message: Any, what: str, limits: Limits) -> str | None:
    if len(message.attributes) > limits.max_attributes:
        return f"{what} has more than {limits.max_attributes} attributes"
    if message.ByteSize() > limits.max_attribute_bytes:
        return f"{what} larger than {limits.max_attribute_bytes} bytes"
    return None


def _span_problem(span: Span, limits: Limits) -> str | None:
    if len(span.trace_id) != 16 or span.trace_id == bytes(16):
        return "trace_id must be 16 bytes and not all zero"
    if len(span.span_id) != 8 or span.span_id == bytes(8):
        return "span_id must be 8 bytes and not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id must be empty or 8 bytes"
    if len(span.name.encode()) > limits.max_name_bytes:
        return f"name longer than {limits.max_name_bytes} bytes"
    if len(span.attributes) > limits.max_attributes:
        return f"more than {limits.max_attributes} attributes"
    size = span.ByteSize()
    if size > limits.max_span_bytes:
        return f"span larger than {limits.max_span_bytes} bytes"
    # A value over the limit makes the whole span over it: only then size each one
    # (sizing every value of every span was 15% of the enclave's time).
    if size > limits.max_attribute_bytes and any(
        _value_size(kv) > limits.max_attribute_bytes for kv in span.attributes
    ):
        return f"an attribute value larger than {limits.max_attribute_bytes} bytes"
    return None


def _value_size(kv: KeyValue) -> int:
    value: AnyValue = kv.value
    return int(value.ByteSize())
