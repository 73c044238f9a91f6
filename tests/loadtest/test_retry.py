"""Retrying as the OTel exporters do: RetryInfo honoured, retryable codes retried, others not."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2

from otrace.loadtest import Endpoint, OtlpSink, Refusal, RetryPolicy, build_pool, run_load
from otrace.loadtest._retry import parse_retry_after, retry_info_delay
from otrace.loadtest._traces import TraceShape
from otrace.loadtest._transport import Delivery, GrpcTransport, HttpTransport, Transport, deliver
from tests.loadtest.conftest import short_load

# A backoff so short that a harness ignoring RetryInfo would retry almost at once.
EAGER = RetryPolicy(max_attempts=6, initial_backoff_s=0.001, budget_s=10.0)
UNAVAILABLE = Refusal(grpc.StatusCode.UNAVAILABLE, 503, "shedding load", retry_after_s=0.3)
INVALID = Refusal(grpc.StatusCode.INVALID_ARGUMENT, 400, "bad request")


class Script:
    """Refuses the first requests as listed, then answers every later one with `then`."""

    def __init__(self, first: list[Refusal], then: Refusal | None = None) -> None:
        self._first, self._then = list(first), then

    def __call__(self) -> Refusal | None:
        return self._first.pop(0) if self._first else self._then


def scripted_sink(first: list[Refusal], then: Refusal | None = None) -> OtlpSink:
    return OtlpSink("127.0.0.1:0", "127.0.0.1:0", refuse=Script(first, then))


@pytest.fixture(scope="module")
def body() -> bytes:
    return build_pool(TraceShape(), 20, 20, seed=3)[0].body


def _deliver(
    transport: Transport, body: bytes, policy: RetryPolicy = EAGER
) -> tuple[Delivery, float]:
    started = time.monotonic()
    try:
        result = deliver(transport, body, policy, rnd=random.Random(1), stop=threading.Event())
    finally:
        transport.close()
    return result, time.monotonic() - started


@pytest.fixture
def unavailable_three_times() -> Iterator[OtlpSink]:
    with scripted_sink([UNAVAILABLE] * 3) as sink:
        yield sink


def test_grpc_waits_the_advised_delay_then_succeeds(
    unavailable_three_times: OtlpSink, body: bytes
) -> None:
    sink = unavailable_three_times
    result, elapsed = _deliver(GrpcTransport(Endpoint(sink.grpc_address)), body)
    assert result.attempt.code is None
    assert result.retries == {"UNAVAILABLE": 3}
    assert elapsed >= 0.9 and result.waited_s == pytest.approx(0.9)
    assert (sink.counts().refused, sink.counts().requests) == (3, 1)


def test_load_run_ends_with_everything_acknowledged_after_retries() -> None:
    with scripted_sink([UNAVAILABLE] * 4) as sink:
        report = run_load(short_load(sink.grpc_address, retry=EAGER))
    t = report.tally
    assert t.retries == {"UNAVAILABLE": 4}
    assert t.failed == {}
    assert t.sent_spans == t.acked_spans == sink.counts().spans > 0


def test_invalid_argument_fails_without_retry() -> None:
    with scripted_sink([], then=INVALID) as sink:
        report = run_load(short_load(sink.grpc_address, retry=EAGER))
    t = report.tally
    assert t.acked_spans == 0 and t.retries == {}
    assert t.failed == {"INVALID_ARGUMENT": t.sent_spans} and t.sent_spans > 0
    assert sink.counts().refused == t.requests  # each request was tried exactly once


def test_resource_exhausted_is_retried_only_with_retry_info(body: bytes) -> None:
    bare = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "too big")
    advised = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "slow down", retry_after_s=0.1)
    with scripted_sink([bare]) as sink:
        result, _ = _deliver(GrpcTransport(Endpoint(sink.grpc_address)), body)
        assert result.attempt.code == "RESOURCE_EXHAUSTED"
        assert sink.counts().refused == 1 and sink.counts().requests == 0
    with scripted_sink([advised]) as sink:
        result, elapsed = _deliver(GrpcTransport(Endpoint(sink.grpc_address)), body)
        assert result.attempt.code is None and elapsed >= 0.1
        assert sink.counts().requests == 1


def test_retry_budget_bounds_the_attempts(body: bytes) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, budget_s=10.0)
    with scripted_sink([], then=UNAVAILABLE) as sink:
        result, _ = _deliver(GrpcTransport(Endpoint(sink.grpc_address)), body, policy)
        assert result.attempt.code == "UNAVAILABLE"
        assert sink.counts().refused == 3
    short = RetryPolicy(max_attempts=10, initial_backoff_s=0.001, budget_s=0.5)
    with scripted_sink([], then=UNAVAILABLE) as sink:
        _deliver(GrpcTransport(Endpoint(sink.grpc_address)), body, short)
        assert sink.counts().refused == 2  # 0.3 s waited; another 0.3 would exceed 0.5


def test_http_honours_retry_after_and_does_not_retry_400(body: bytes) -> None:
    busy = Refusal(grpc.StatusCode.UNAVAILABLE, 503, "busy", retry_after_s=1)
    with scripted_sink([busy]) as sink:
        result, elapsed = _deliver(HttpTransport(Endpoint(sink.http_address)), body)
        assert result.attempt.code is None and elapsed >= 1.0
        assert result.retries == {"HTTP 503": 1}
    with scripted_sink([INVALID]) as sink:
        result, _ = _deliver(HttpTransport(Endpoint(sink.http_address)), body)
        assert result.attempt.code == "HTTP 400"
        assert result.retries == {} and sink.counts().requests == 0


def test_connection_refused_is_retried_then_failed(body: bytes) -> None:
    with OtlpSink("", "127.0.0.1:0") as sink:
        closed = sink.http_address  # nothing listens there once the sink stops
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, budget_s=1.0)
    result, _ = _deliver(HttpTransport(Endpoint(closed)), body, policy)
    assert result.attempt.code == "CONNECTION_ERROR"
    assert result.retries == {"CONNECTION_ERROR": 1}


def _info(seconds: int, nanos: int = 0) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=Duration(seconds=seconds, nanos=nanos))


def test_retry_info_read_from_status_details_or_trailer() -> None:
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE)
    status.details.add().Pack(_info(2, 500_000_000))
    details = ("grpc-status-details-bin", status.SerializeToString())
    trailer = ("google.rpc.retryinfo-bin", _info(7).SerializeToString())
    assert retry_info_delay([details]) == 2.5
    assert retry_info_delay([trailer]) == 7.0
    assert retry_info_delay([trailer, details]) == 2.5  # the status details win
    assert retry_info_delay([("other", "x")]) is None and retry_info_delay(None) is None


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
