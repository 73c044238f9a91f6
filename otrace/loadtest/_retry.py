"""When to retry an Export and how long to wait, as the OpenTelemetry exporters do.

gRPC (OTLP specification, "Failures"): CANCELLED, DEADLINE_EXCEEDED, ABORTED,
OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retryable; RESOURCE_EXHAUSTED only
when the server sent RetryInfo (otherwise the server says it will never take
this request). A RetryInfo delay, from the `grpc-status-details-bin` status
details or the `google.rpc.retryinfo-bin` trailer, replaces the backoff.
HTTP: 429, 502, 503 and 504 are retryable, waiting `Retry-After` when given.
Everything else fails at once. Each request has a bounded budget: at most
`max_attempts` attempts and `budget_s` seconds spent waiting between them.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "RETRYABLE_GRPC",
    "RETRYABLE_HTTP",
    "Attempt",
    "RetryPolicy",
    "parse_retry_after",
    "retry_info_delay",
]

RETRYABLE_GRPC = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"}
)
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_RETRY_INFO = "google.rpc.retryinfo-bin"
_STATUS_DETAILS = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one Export attempt.

    `code` is None when the Export was answered OK; otherwise a gRPC status name
    (`UNAVAILABLE`), `HTTP 503`, or `CONNECTION_ERROR`.
    """

    code: str | None
    retryable: bool = False
    delay_s: float | None = None  # the server's advice (RetryInfo, Retry-After)
    rejected_spans: int = 0
    message: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts, bounded per request."""

    max_attempts: int = 6
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 32.0
    budget_s: float = 60.0

    def delay(self, attempt: Attempt, retry_no: int, rnd: random.Random) -> float:
        """Seconds to wait before retry number `retry_no` (1-based) after `attempt`."""
        if attempt.delay_s is not None:
            return attempt.delay_s  # the server's advice, never shortened
        backoff = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** (retry_no - 1))
        return float(backoff * (0.8 + 0.4 * rnd.random()))


def retry_info_delay(trailers: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The RetryInfo delay a gRPC error carries (status details first, then the trailer)."""
    found: float | None = None
    for key, value in trailers or ():
        if not isinstance(value, bytes):
            continue
        if key == _STATUS_DETAILS:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return _seconds(info)
        elif key == _RETRY_INFO:
            found = _seconds(error_details_pb2.RetryInfo.FromString(value))
    return found


def _seconds(info: error_details_pb2.RetryInfo) -> float:
    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """An HTTP `Retry-After` header (delay-seconds or an HTTP-date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
