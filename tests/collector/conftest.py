"""A real node (enclave process, embedded KMS, gRPC + HTTP receivers) on port 0."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector import Node
from otrace.settings import Settings


def node_settings(tmp_path: Path, **changes: object) -> Settings:
    fields: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "platform_dir": tmp_path / "platform",
        "otlp_grpc": "127.0.0.1:0",
        "otlp_http": "127.0.0.1:0",
        "metrics": "127.0.0.1:0",
        "query": "127.0.0.1:0",
        "oram_blocks": 1024,
        "oram_batch": 8,
        "trace_reads": 4,
        "search_reads": 8,
        "cache_levels": 3,
        "epoch_ms": 50,
        "max_request_bytes": 256 << 10,
    }
    fields.update(changes)
    return Settings(**fields)  # type: ignore[arg-type]


@contextmanager
def running(settings: Settings) -> Iterator[Node]:
    """A started node, stopped on exit."""
    node = Node(settings)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with running(node_settings(tmp_path)) as started:
        yield started


def stored(node: Node) -> TracesData:
    node.flush()
    return TracesData.FromString(node.scan())


def spans_of(data: TracesData) -> list[tuple[object, ...]]:
    """(trace id, span id, parent, name, service) for every stored span."""
    out = []
    for rs in data.resource_spans:
        service = next(
            (kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"), ""
        )
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append(
                    (
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        span.name,
                        service,
                    )
                )
    return out
