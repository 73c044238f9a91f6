"""Bad input over real gRPC and HTTP: OTLP-specified answers, and nothing acknowledged is lost."""

from __future__ import annotations

import json
import os

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector import Node
from tests.collector.conftest import spans_of, stored
from tests.collector.otlp_helpers import grpc_export, http_post, request


def _ports(node: Node) -> tuple[int, int]:
    assert node.grpc is not None and node.http is not None
    return node.grpc.port, node.http.port


def test_grpc_bad_requests_get_otlp_codes_and_stored_data_survives(node: Node) -> None:
    grpc_port, _ = _ports(node)
    grpc_export(grpc_port, request(4, "before").SerializeToString())

    with pytest.raises(grpc.RpcError) as err:
        grpc_export(grpc_port, b"\x0a\xff\xff\xff\x0f garbage")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed OTLP protobuf" in err.value.details()

    bad_utf8 = request(1).SerializeToString().replace(b"op-0", b"\xff\xfe-0")
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(grpc_port, bad_utf8)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in err.value.details()

    with pytest.raises(grpc.RpcError) as err:
        grpc_export(grpc_port, os.urandom(300 << 10))  # limit is 256 KiB in these tests
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    spans = spans_of(stored(node))
    assert len(spans) == 4 and {s[4] for s in spans} == {"before"}


def test_invalid_spans_are_dropped_with_partial_success(node: Node) -> None:
    grpc_port, http_port = _ports(node)
    req = request(3, "partial")
    req.resource_spans[0].scope_spans[0].spans[1].trace_id = b"\x01\x02\x03\x04"
    req.resource_spans[0].scope_spans[0].spans[2].span_id = bytes(8)
    reply = ExportTraceServiceResponse.FromString(grpc_export(grpc_port, req.SerializeToString()))
    assert reply.partial_success.rejected_spans == 2
    assert "trace_id must be 16 bytes" in reply.partial_success.error_message
    assert "span_id must be 8 bytes" in reply.partial_success.error_message

    status, _, body = http_post(http_port, req.SerializeToString())
    assert status == 200
    assert ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans == 2
    assert [s[3] for s in spans_of(stored(node))] == ["op-0", "op-0"]


def test_http_json_with_hex_ids_is_stored(node: Node) -> None:
    _, http_port = _ports(node)
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": "json-op",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [{"key": "n", "value": {"intValue": "7"}}],
                                "someFutureField": 1,
                            }
                        ]
                    }
                ],
            }
        ]
    }
    status, headers, reply = http_post(http_port, json.dumps(body).encode(), "application/json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(reply) == {}
    assert spans_of(stored(node)) == [(trace_id, span_id, "", "json-op", "json-svc")]


def test_http_bad_requests(node: Node) -> None:
    _, http_port = _ports(node)
    status, _, body = http_post(http_port, b"{not json", "application/json")
    assert status == 400 and "malformed OTLP/JSON" in json.loads(body)["message"]

    status, _, body = http_post(http_port, b"\x0a\xff\xff", "application/x-protobuf")
    assert status == 400
    assert "malformed OTLP protobuf" in status_pb2.Status.FromString(body).message

    status, _, _ = http_post(http_port, b"hello", "text/plain")
    assert status == 415

    status, _, _ = http_post(http_port, os.urandom(300 << 10))
    assert status == 413

    # Garbage declared as gzip is the client's fault: 400, not a 500 (found by the fuzzer,
    # tests/reliability/test_fuzz_otlp.py).
    status, _, _ = http_post(http_port, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400

    bomb = bytes(8 << 20)  # gzips to ~8 KiB, inflates far past the 256 KiB limit
    status, _, _ = http_post(http_port, bomb, gzipped=True)
    assert status == 413

    status, _, _ = http_post(http_port, request(2, "gz").SerializeToString(), gzipped=True)
    assert status == 200
    assert {s[4] for s in spans_of(stored(node))} == {"gz"}


def test_health_and_metrics(node: Node) -> None:
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    grpc_port, _ = _ports(node)
    grpc_export(grpc_port, request(5).SerializeToString())
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        check = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    node.flush()
    assert node.metrics is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "otrace_spans_accepted_total 5.0" in text
    assert "otrace_spans_stored_total 5.0" in text
    assert "otrace_journal_depth 0.0" in text
    assert "otrace_epoch_seconds_count" in text


def test_oversize_attribute_and_too_many_attributes_are_rejected(node: Node) -> None:
    grpc_port, _ = _ports(node)
    req = request(3, "limits")
    spans = req.resource_spans[0].scope_spans[0].spans
    spans[0].attributes.add(key="blob").value.string_value = "x" * (65 << 10)
    for i in range(129):
        spans[1].attributes.add(key=f"a{i}").value.int_value = i
    reply = ExportTraceServiceResponse.FromString(grpc_export(grpc_port, req.SerializeToString()))
    assert reply.partial_success.rejected_spans == 2
    message = reply.partial_success.error_message
    assert "an attribute value larger than 65536 bytes" in message
    assert "more than 128 attributes" in message
    assert [s[3] for s in spans_of(stored(node))] == ["op-2"]


def test_oversize_resource_rejects_its_spans_not_the_node(node: Node) -> None:
    grpc_port, _ = _ports(node)
    req = request(3, "huge-resource")
    req.resource_spans[0].resource.attributes.add(key="blob").value.string_value = "r" * (70 << 10)
    ok = request(2, "fine")
    req.resource_spans.extend(ok.resource_spans)
    reply = ExportTraceServiceResponse.FromString(grpc_export(grpc_port, req.SerializeToString()))
    assert reply.partial_success.rejected_spans == 3
    assert "resource larger than 65536 bytes" in reply.partial_success.error_message
    assert {s[4] for s in spans_of(stored(node))} == {"fine"}
