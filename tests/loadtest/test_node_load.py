"""A short load against a real `otrace serve` node in both storage modes.

Every Export is acknowledged, and every acknowledged span is read back from the
node's storage byte for byte: through `Node.scan()` (every written block, through
the ORAM) wrapped as a `TraceSource`, and through the query API with `--verify`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector import Node
from otrace.cli import cli
from otrace.loadtest import run_load, verify_traces
from tests.collector.conftest import node_settings
from tests.loadtest.conftest import short_load


class ScanSource:
    """Everything the node stored, indexed by trace id (a stand-in for the query API)."""

    def __init__(self, node: Node) -> None:
        node.flush()
        self._by_trace: dict[bytes, TracesData] = {}
        for rs in TracesData.FromString(node.scan()).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    data = self._by_trace.setdefault(span.trace_id, TracesData())
                    one = data.resource_spans.add(resource=rs.resource)
                    one.scope_spans.add(scope=ss.scope).spans.append(span)

    def get_trace(self, trace_id: bytes) -> TracesData:
        return self._by_trace.get(trace_id, TracesData())


@pytest.fixture(params=["oram", "encrypted"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    started = Node(node_settings(tmp_path, storage=request.param))
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_span_acknowledged_and_stored_intact(node: Node, protocol: str) -> None:
    assert node.grpc is not None and node.http is not None
    target = node.grpc.address if protocol == "grpc" else f"127.0.0.1:{node.http.port}"
    report = run_load(short_load(target, protocol=protocol, duration_s=1.5, sample=None))
    t = report.tally
    assert t.failed == {}, t.failed
    assert t.sent_spans == t.acked_spans >= 2_000
    assert sum(len(trace.spans) for trace in report.sample) == t.acked_spans  # sample=all
    result = verify_traces(ScanSource(node), report.sample, wait_s=0)
    assert (result.lost_spans, result.corrupt_spans) == (0, 0), result.problems()
    assert result.verified_traces == len(report.sample)


def test_sdk_exporters_spans_stored_intact(node: Node) -> None:
    """The official SDK exporter's encoding is what the ledger digests: it must come back."""
    assert node.grpc is not None
    config = short_load(node.grpc.address, sdk=True, rate=1_000.0, sample=None)
    report = run_load(config)
    assert report.tally.failed == {} and report.tally.acked_spans >= 800
    result = verify_traces(ScanSource(node), report.sample, wait_s=0)
    assert result.ok, result.problems()
    assert result.verified_traces == len(report.sample) > 50


def test_cli_verify_reads_back_through_the_query_api(node: Node, tmp_path: Path) -> None:
    """`otrace loadtest --verify` end to end: an attested analyst session to the node."""
    assert node.grpc is not None and node.query is not None
    out = tmp_path / "report.json"
    args = ["loadtest", "--endpoint", node.grpc.address, "--rate", "2000", "--duration", "1s",
            "--workers", "1", "--spans-per-request", "100", "--verify", "--sample", "40",
            "--verify-wait", "10s", "--json", str(out),
            "--query-endpoint", f"127.0.0.1:{node.query.port}",
            "--key-file", str(node.credential_path)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["verified_traces"] == 40 and report["lost_spans"] == 0
    assert report["corrupt_spans"] == 0 and report["acked_spans"] == report["sent_spans"]
