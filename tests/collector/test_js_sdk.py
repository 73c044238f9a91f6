"""The OpenTelemetry JavaScript SDK on Node.js, OTLP/gRPC exporter, against a real node.

`js/package-lock.json` pins the npm packages; they are installed into
`js/node_modules` once per session with `npm ci`, and not at all when that
directory already holds the same lock. Only a machine without node or npm
skips: a failed install fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector import Node
from tests.collector.conftest import spans_of, stored

JS = Path(__file__).resolve().parent / "js"
INSTALLED = JS / "node_modules" / ".otrace-lock-sha256"
TRACES = 5
# What export.js makes in each trace: span name -> its parent's name.
PARENT_OF = {
    "GET /checkout": "",
    "SELECT orders": "GET /checkout",
    "POST /payments": "GET /checkout",
    "payments.Charge": "POST /payments",
}


@pytest.fixture(scope="session")
def node_bin() -> str:
    """Path of `node`, with the pinned SDK installed beside export.js."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js is not installed (node and npm must be on PATH)")
    lock = hashlib.sha256((JS / "package-lock.json").read_bytes()).hexdigest()
    if not INSTALLED.is_file() or INSTALLED.read_text() != lock:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        INSTALLED.write_text(lock)
    return node


def _attributes(data: TracesData) -> dict[str, dict[str, AnyValue]]:
    return {
        span.span_id.hex(): {kv.key: kv.value for kv in span.attributes}
        for rs in data.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }


def test_js_sdk_spans_are_stored(node: Node, node_bin: str) -> None:
    assert node.grpc is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{node.grpc.port}",
        "OTEL_SERVICE_NAME": "checkout-js",
        "TRACES": str(TRACES),
    }
    run = subprocess.run(
        [node_bin, "export.js"], cwd=JS, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    made = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(made) == len(PARENT_OF) * TRACES
    expected = {(s["trace"], s["span"], s["parent"], s["name"], "checkout-js") for s in made}

    data = stored(node)
    spans = spans_of(data)
    assert len(spans) == len(expected) and set(spans) == expected  # ids, parents, names, service
    by_id = {s[1]: s for s in spans}
    for trace_id, _, parent, name, _ in spans:
        if parent:
            assert by_id[parent][0] == trace_id  # the parent is stored, in the same trace
        assert (by_id[parent][3] if parent else "") == PARENT_OF[name]
    assert len({s[0] for s in spans}) == TRACES

    for rs in data.resource_spans:
        resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
        assert resource["telemetry.sdk.language"] == "nodejs"
    attributes = _attributes(data)
    rows = []
    for _, span_id, _, name, _ in spans:
        if name == "SELECT orders":
            rows.append(attributes[span_id]["db.rows"].int_value)
            assert attributes[span_id]["customer"].string_value == f"c-{rows[-1]}"
        elif name == "GET /checkout":
            assert attributes[span_id]["http.route"].string_value == "/checkout"
        elif name == "payments.Charge":
            assert attributes[span_id]["rpc.ok"].bool_value is True
    assert sorted(rows) == list(range(TRACES))
