"""Hypothesis over OTLP protobuf mutations, sent to a running node over gRPC and HTTP.

Each example builds an Export request (spans with nested AnyValue kvlists and
arrays, ids of any length, strings that may hold invalid UTF-8), then maybe
mutates its bytes (truncation, bit flips, inserted garbage, oversize padding)
and maybe wraps it in gzip or in garbage that claims to be gzip. The node must
answer with an OTLP-specified code only:

    gRPC  OK (partial_success allowed), INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
          UNAVAILABLE (load shedding, with RetryInfo)
    HTTP  200 (partial_success allowed), 400, 413, 503

and afterwards it is still up, and the traces stored before the fuzzing all
read back intact through the query API. The hand-picked cases are in
`tests/collector/test_bad_input.py`; this is their randomised twin.
"""

from __future__ import annotations

import gzip
import http.client
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from collector import Node
from collector._grpc_receiver import EXPORT
from otrace.loadtest._verify import check_trace
from tests.reliability.conftest import (
    expected_of,
    known_traces,
    node_settings,
    query_client,
    send_known,
)

LIMIT = 256 << 10  # max_request_bytes of the test node
MARK = b"\x00MARK\x00"  # replaced by invalid UTF-8 after serialization
GRPC_OK = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
HTTP_OK = {200, 400, 413, 503}


@dataclass
class Fuzzed:
    node: Node
    before: list[ExportTraceServiceRequest]
    channel: grpc.Channel
    answers: dict[str, int]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    node = Node(node_settings(root, max_request_bytes=LIMIT))
    node.start()
    try:
        before = known_traces(5, service="before-fuzz")
        send_known(node, before)
        node.flush()
        assert node.grpc is not None
        with grpc.insecure_channel(f"127.0.0.1:{node.grpc.port}") as channel:
            state = Fuzzed(node, before, channel, {})
            yield state
        print(f"fuzz answers: {dict(sorted(state.answers.items()))}")
        _still_intact(state)
    finally:
        node.stop()


def _still_intact(state: Fuzzed) -> None:
    """The node still takes a valid Export, and every earlier trace reads back exact."""
    after = known_traces(1, service="after-fuzz")
    send_known(state.node, after)
    state.node.flush()
    with query_client(state.node) as client:
        for req in state.before + after:
            expected = expected_of(req)
            check = check_trace(expected, client.get_trace(expected.trace_id))
            assert check.intact, f"stored data damaged by fuzzing: {check}"


# ------------------------------------------------------------------ requests


def _nested(depth: int, kind: str) -> AnyValue:
    value = AnyValue(string_value="leaf")
    for i in range(depth):
        outer = AnyValue()
        if kind == "kvlist" or (kind == "mixed" and i % 2):
            outer.kvlist_value.values.add(key=f"k{i}").value.CopyFrom(value)
        else:
            outer.array_value.values.add().CopyFrom(value)
        value = outer
    return value


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    req = ExportTraceServiceRequest()
    for r in range(draw(st.integers(0, 3))):
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = f"fuzz-{r}"
        ss = rs.scope_spans.add()
        for _ in range(draw(st.integers(0, 4))):
            span = ss.spans.add(
                trace_id=draw(
                    st.sampled_from(
                        [os.urandom(16), b"", os.urandom(15), os.urandom(17), bytes(16)]
                    )
                ),
                span_id=draw(
                    st.sampled_from([os.urandom(8), b"", os.urandom(7), os.urandom(9), bytes(8)])
                ),
                parent_span_id=draw(st.sampled_from([b"", os.urandom(8), os.urandom(3)])),
                name=draw(st.text(max_size=40)),
                start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                end_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
            )
            for a in range(draw(st.integers(0, 3))):
                attr = span.attributes.add(key=draw(st.text(max_size=12)) or f"a{a}")
                choice = draw(st.sampled_from(["str", "int", "bytes", "nested", "utf8"]))
                if choice == "nested":
                    depth = draw(st.integers(1, 400))
                    attr.value.CopyFrom(
                        _nested(depth, draw(st.sampled_from(["kvlist", "array", "mixed"])))
                    )
                elif choice == "int":
                    attr.value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
                elif choice == "bytes":
                    attr.value.bytes_value = draw(st.binary(max_size=64))
                elif choice == "utf8":
                    attr.value.string_value = MARK.decode()
                else:
                    attr.value.string_value = draw(st.text(max_size=64))
    body = req.SerializeToString()
    return body.replace(MARK, b"\xff\xfe\xc3\x28\xa0\xa1")  # same length: lengths stay valid


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """(body, gzip it, claim gzip without it)."""
    body = bytearray(draw(requests()))
    how = draw(st.sampled_from(["none", "truncate", "flip", "insert", "oversize", "random"]))
    if how == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif how == "flip" and body:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(body) - 1))
            body[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "insert":
        i = draw(st.integers(0, len(body)))
        body[i:i] = draw(st.binary(min_size=1, max_size=32))
    elif how == "oversize":
        body += b"\x0a" + bytes(LIMIT)  # an over-long trailing field
    elif how == "random":
        body = bytearray(draw(st.binary(max_size=512)))
    wrap = draw(st.sampled_from(["plain", "gzip", "fake-gzip"]))
    return bytes(body), wrap == "gzip", wrap == "fake-gzip"


# ------------------------------------------------------------------- sending


def _send_grpc(state: Fuzzed, body: bytes, gz: bool) -> str:
    call = state.channel.unary_unary(EXPORT)
    try:
        answer = call(body, timeout=30, compression=grpc.Compression.Gzip if gz else None)
    except grpc.RpcError as err:
        code = err.code()
        assert code in GRPC_OK, f"gRPC answered {code}: {err.details()}"
        return f"grpc {code.name}"
    ExportTraceServiceResponse.FromString(answer)  # a well-formed answer, maybe partial
    return "grpc OK"


def _send_http(state: Fuzzed, body: bytes, gz: bool, fake_gz: bool) -> str:
    assert state.node.http is not None
    headers = {"Content-Type": "application/x-protobuf"}
    if gz or fake_gz:
        headers["Content-Encoding"] = "gzip"
    payload = gzip.compress(body) if gz else body
    conn = http.client.HTTPConnection("127.0.0.1", state.node.http.port, timeout=30)
    try:
        conn.request("POST", "/v1/traces", payload, headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert response.status in HTTP_OK, f"HTTP answered {response.status}: {data[:200]!r}"
    if response.status == 200:
        ExportTraceServiceResponse.FromString(data)
    return f"http {response.status}"


def _fuzz_once(state: Fuzzed, case: tuple[bytes, bool, bool], over: str) -> None:
    body, gz, fake_gz = case
    if over == "grpc":
        outcome = _send_grpc(state, body, gz)
    else:
        outcome = _send_http(state, body, gz, fake_gz)
    state.answers[outcome] = state.answers.get(outcome, 0) + 1


_FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@_FUZZ
@given(case=mutated(), over=st.sampled_from(["grpc", "http"]))
def test_malformed_otlp_gets_otlp_codes(
    fuzzed: Fuzzed, case: tuple[bytes, bool, bool], over: str
) -> None:
    _fuzz_once(fuzzed, case, over)


@pytest.mark.slow
@settings(_FUZZ, max_examples=2000)
@given(case=mutated(), over=st.sampled_from(["grpc", "http"]))
def test_malformed_otlp_gets_otlp_codes_long(
    fuzzed: Fuzzed, case: tuple[bytes, bool, bool], over: str
) -> None:
    _fuzz_once(fuzzed, case, over)
