"""Shared pieces of the reliability suite: a node's files, known traces, read-back."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector import Node
from otrace.loadtest import ExpectedTrace, span_digest
from otrace.soak import rss_of_tree
from query import QueryClient
from tests.collector.conftest import node_settings, running
from tests.collector.otlp_helpers import grpc_export, request

__all__ = [
    "copy_tree",
    "expected_of",
    "known_traces",
    "node_settings",
    "query_client",
    "rss_of_tree",
    "running",
    "send_known",
    "span_ids",
]


def known_traces(
    count: int, spans: int = 3, service: str = "rel"
) -> list[ExportTraceServiceRequest]:
    """`count` requests, one fresh trace each."""
    return [request(spans, f"{service}-{i}", trace_id=os.urandom(16)) for i in range(count)]


def send_known(node: Node, requests: list[ExportTraceServiceRequest]) -> None:
    assert node.grpc is not None
    for req in requests:
        grpc_export(node.grpc.port, req.SerializeToString())


def span_ids(req: ExportTraceServiceRequest) -> set[bytes]:
    return {s.span_id for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans}


@contextmanager
def query_client(node: Node) -> Iterator[QueryClient]:
    with QueryClient.connect(key_file=node.credential_path, timeout=60) as client:
        yield client


def copy_tree(src: Path, dst: Path) -> None:
    """A byte-exact copy of a stopped node's directory (SQLite files with their WAL)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def expected_of(req: ExportTraceServiceRequest) -> ExpectedTrace:
    """What the loadtest read-back checks, for one single-trace request."""
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return ExpectedTrace(
        spans[0].trace_id,
        0,
        tuple((s.span_id, span_digest(s.SerializeToString(deterministic=True))) for s in spans),
    )
