"""Span records packed into fixed-size, zstd-compressed data blocks (inside the enclave).

This module owns the layout of span data in the block device; the collector
packs with it and the query executor unpacks with it.

A record is one span with its resource and scope, as a serialized OTLP
`ResourceSpans`, keyed by (trace id, span id); at ingest it also carries
what the index needs (its keywords, start time and operation), which is not
stored in the block. Records are sorted by trace id
so a trace's spans share blocks, then packed greedily: as many as compress
into one block. A record too large for one block is cut into fragments, each
in its own block, and reassembled on read.

Block layout: `b"OB" | version u8 | flags u8 | payload length u32 | zstd frame | zero padding`.
An all-zero block (never written) holds no records.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import zstandard
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData

from otrace.errors import IntegrityError
from query._keywords import MAX_INDEXED_VALUE, resource_keywords, span_keyword_list

try:  # built from query/_wire.c by the package's install (pyproject.toml)
    from query import _wire
except ImportError:  # a source tree without the build: the protobuf runtime path alone
    _wire = None  # type: ignore[assignment]

__all__ = [
    "PackedBlock",
    "SpanRecord",
    "pack_blocks",
    "records_from_body",
    "records_from_request",
    "traces_data",
    "unpack_blocks",
]

_HEADER = struct.Struct("<2sBBI")
_MAGIC = b"OB"
_RECORD = struct.Struct("<16s8sHHI")  # trace id, span id, fragment index, fragment count, length
_MAX_DECOMPRESSED = 64 << 20
_BY_TRACE = operator.attrgetter("trace_id", "span_id")


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span, self-contained: its ResourceSpans (resource, scope, the span)."""

    trace_id: bytes
    span_id: bytes
    payload: bytes = field(repr=False)
    keywords: tuple[str, ...] = field(default=(), repr=False, compare=False)
    start_ns: int = field(default=0, compare=False)
    operation: tuple[str, str] = field(default=("", ""), compare=False)


@dataclass(frozen=True, slots=True)
class PackedBlock:
    """One data block and the records (or fragments of records) it holds."""

    data: bytes = field(repr=False)
    records: tuple[SpanRecord, ...] = field(repr=False)


def records_from_request(
    request: ExportTraceServiceRequest, unindexed: frozenset[str] = frozenset()
) -> list[SpanRecord]:
    """Splits a validated request into one record per span, with its index keywords
    (attributes whose key is in `unindexed` are stored but not indexed)."""
    out: list[SpanRecord] = []
    for rs in request.resource_spans:
        service, shared = resource_keywords(rs.resource, unindexed)
        for ss in rs.scope_spans:
            # One container per scope, refilled with one span at a time: copying the
            # resource per span cost a third more (measured 6.1 vs 4.0 us a span).
            single = ResourceSpans(resource=rs.resource, schema_url=rs.schema_url)
            holder = single.scope_spans.add(scope=ss.scope, schema_url=ss.schema_url).spans
            for span in ss.spans:
                holder.append(span)
                out.append(
                    SpanRecord(
                        span.trace_id,
                        span.span_id,
                        single.SerializeToString(),
                        span_keyword_list(shared, span, unindexed),
                        span.start_time_unix_nano,
                        (service, span.name),
                    )
                )
                del holder[:]
    return out


def records_from_body(body: bytes, unindexed: frozenset[str] = frozenset()) -> list[SpanRecord]:
    """`records_from_request` of a serialized, validated request. Read off the wire by
    `query._wire` (~5x less CPU a span), which leaves unusual encodings (a field with
    another wire type, a singular message given twice) to the protobuf runtime."""
    if _wire is not None:
        split: list[SpanRecord] | None = _wire.split_request(
            body, unindexed, MAX_INDEXED_VALUE, SpanRecord
        )
        if split is not None:
            return split
    return records_from_request(ExportTraceServiceRequest.FromString(body), unindexed)


class _Packer:
    def __init__(self, block_size: int) -> None:
        self._capacity = block_size - _HEADER.size
        self._block_size = block_size
        self._zstd = zstandard.ZstdCompressor(level=3)
        self._ratio = 3.0  # raw bytes per compressed byte, learnt as we go

    def block(self, payload: bytes) -> bytes | None:
        compressed = self._zstd.compress(payload)
        if len(compressed) > self._capacity:
            return None
        self._ratio = 0.8 * self._ratio + 0.2 * (len(payload) / max(1, len(compressed)))
        header = _HEADER.pack(_MAGIC, 1, 0, len(compressed))
        return header + compressed + bytes(self._capacity - len(compressed))

    def pack(self, encoded: list[bytes]) -> list[tuple[bytes, range]]:
        """Blocks, each with the range of `encoded` items it holds."""
        blocks: list[tuple[bytes, range]] = []
        i = 0
        while i < len(encoded):
            count = self._guess(encoded, i)
            while True:
                made = self.block(b"".join(encoded[i : i + count]))
                if made is not None:
                    blocks.append((made, range(i, i + count)))
                    i += count
                    break
                if count == 1:
                    raise ValueError("a fragment did not fit its block")
                count = max(1, count * 3 // 4)
        return blocks

    def _guess(self, encoded: list[bytes], start: int) -> int:
        budget = self._capacity * self._ratio * 0.95
        size = count = 0
        for item in encoded[start:]:
            if count and size + len(item) > budget:
                break
            size += len(item)
            count += 1
        return count


def pack_blocks(records: Iterable[SpanRecord], block_size: int) -> list[PackedBlock]:
    """Packs records into blocks of exactly `block_size` bytes, trace by trace."""
    packer = _Packer(block_size)
    fragment = block_size - _HEADER.size - _RECORD.size - 64  # zstd frame overhead margin
    encoded: list[bytes] = []
    owners: list[SpanRecord] = []
    for rec in sorted(records, key=_BY_TRACE):
        pieces = [rec.payload[o : o + fragment] for o in range(0, len(rec.payload), fragment)]
        for index, piece in enumerate(pieces or [b""]):
            head = _RECORD.pack(rec.trace_id, rec.span_id, index, max(1, len(pieces)), len(piece))
            encoded.append(head + piece)
            owners.append(rec)
    return [
        PackedBlock(data, _distinct(owners[i] for i in items))
        for data, items in packer.pack(encoded)
    ]


def _distinct(records: Iterable[SpanRecord]) -> tuple[SpanRecord, ...]:
    """Records in order, each once (a record's fragments are adjacent)."""
    out: list[SpanRecord] = []
    for rec in records:
        if not out or out[-1] is not rec:
            out.append(rec)
    return tuple(out)


def unpack_blocks(blocks: Iterable[bytes]) -> list[SpanRecord]:
    """Records in `blocks`; fragments whose siblings are not among `blocks` are skipped."""
    whole: list[SpanRecord] = []
    partial: dict[tuple[bytes, bytes], dict[int, bytes]] = {}
    counts: dict[tuple[bytes, bytes], int] = {}
    for payload in (_payload(b) for b in blocks):
        offset = 0
        while offset < len(payload):
            trace_id, span_id, index, count, length = _RECORD.unpack_from(payload, offset)
            offset += _RECORD.size
            data = payload[offset : offset + length]
            offset += length
            if count == 1:
                whole.append(SpanRecord(trace_id, span_id, data))
            else:
                partial.setdefault((trace_id, span_id), {})[index] = data
                counts[(trace_id, span_id)] = count
    for key, pieces in partial.items():
        if len(pieces) == counts[key]:
            whole.append(SpanRecord(*key, b"".join(pieces[i] for i in range(counts[key]))))
    return whole


def _payload(block: bytes) -> bytes:
    magic, version, _flags, length = _HEADER.unpack_from(block)
    if magic != _MAGIC:
        return b""
    if version != 1 or length > len(block) - _HEADER.size:
        raise IntegrityError("a data block has an unknown layout")
    try:
        return zstandard.ZstdDecompressor().decompress(
            block[_HEADER.size : _HEADER.size + length], max_output_size=_MAX_DECOMPRESSED
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"a data block does not decompress: {exc}") from None


def traces_data(records: Iterable[SpanRecord]) -> TracesData:
    """Records merged back into one OTLP `TracesData`, in (trace, span) order."""
    data = TracesData()
    for rec in sorted(records, key=_BY_TRACE):
        data.resource_spans.append(ResourceSpans.FromString(rec.payload))
    return data
