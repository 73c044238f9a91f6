"""Real OpenTelemetry SDK exporters, configured only by environment, against a real node."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import Node
from tests.collector.conftest import spans_of, stored
from tests.collector.otlp_helpers import run_sdk_exporter


@pytest.mark.parametrize(
    ("protocol", "compression"), [("grpc", "none"), ("grpc", "gzip"), ("http/protobuf", "gzip")]
)
def test_sdk_exporter_spans_are_stored(node: Node, protocol: str, compression: str) -> None:
    assert node.grpc is not None and node.http is not None
    port = node.grpc.port if protocol == "grpc" else node.http.port
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": f"checkout-{protocol}",
    }
    if compression == "gzip":
        env["OTEL_EXPORTER_OTLP_COMPRESSION"] = "gzip"
    run = run_sdk_exporter(env)
    assert run.returncode == 0, run.stderr
    spans = spans_of(stored(node))
    assert len(spans) == 10
    assert {s[4] for s in spans} == {f"checkout-{protocol}"}
    roots = {s[1]: s for s in spans if s[3] == "GET /checkout"}
    children = [s for s in spans if s[3] == "SELECT orders"]
    assert len(roots) == 5 and len(children) == 5
    for child in children:
        assert child[2] in roots and roots[child[2]][0] == child[0]  # same trace, right parent


def test_node_on_either_store_keeps_spans_across_restart(tmp_path: Path, store_url: str) -> None:
    from collector import Node
    from tests.collector.conftest import node_settings
    from tests.collector.otlp_helpers import grpc_export, request

    settings = node_settings(tmp_path, store=store_url, storage="oram")
    for round_ in range(2):
        node = Node(settings)
        node.start()
        try:
            assert node.grpc is not None
            grpc_export(node.grpc.port, request(3, f"round-{round_}").SerializeToString())
            services = sorted({s[4] for s in spans_of(stored(node))})
        finally:
            node.stop()
        assert services == [f"round-{r}" for r in range(round_ + 1)]
