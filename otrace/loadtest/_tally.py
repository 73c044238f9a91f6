"""Per-worker counters and the pacing clock, shared by the prebuilt and the SDK workers.

Every request ends in exactly one bucket: its spans are acknowledged (minus
`partial_success.rejected_spans`, counted as rejected) or failed under the
code of its last answer. So `sent == acked + rejected + failed` once a worker
has finished, which the tests check against what the sink counted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from otrace.loadtest._histogram import LatencyHistogram

__all__ = ["Pacer", "Tally", "WorkerStats", "sum_tallies"]


@dataclass(frozen=True, slots=True)
class Tally:
    """Cumulative counts of one worker (or of all of them, summed)."""

    sent_spans: int = 0
    acked_spans: int = 0
    rejected_spans: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # code -> spans
    retries: dict[str, int] = field(default_factory=dict)  # code -> retried attempts
    requests: int = 0
    sent_bytes: int = 0
    latency: dict[int, int] = field(default_factory=dict)  # LatencyHistogram counts

    @property
    def failed_spans(self) -> int:
        return sum(self.failed.values())


def sum_tallies(tallies: Iterable[Tally]) -> Tally:
    failed: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    latency: Counter[int] = Counter()
    sums = [0, 0, 0, 0, 0]
    for t in tallies:
        for i, value in enumerate(
            (t.sent_spans, t.acked_spans, t.rejected_spans, t.requests, t.sent_bytes)
        ):
            sums[i] += value
        failed.update(t.failed)
        retries.update(t.retries)
        latency.update(t.latency)
    return Tally(sums[0], sums[1], sums[2], dict(failed), dict(retries), sums[3], sums[4],
                 dict(latency))  # fmt: skip


class WorkerStats:
    """Thread-safe accumulation of one worker's outcomes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = self._acked = self._rejected = self._requests = self._bytes = 0
        self._failed: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self._latency = LatencyHistogram()

    def sending(self, spans: int, size: int) -> None:
        with self._lock:
            self._sent += spans
            self._requests += 1
            self._bytes += size

    def answered(
        self, spans: int, code: str | None, rejected: int, latency_s: float, retries: Counter[str]
    ) -> None:
        with self._lock:
            self._retries.update(retries)
            if code is None:
                self._acked += spans - rejected
                self._rejected += rejected
                self._latency.record(latency_s)
            else:
                self._failed[code] += spans

    def tally(self) -> Tally:
        with self._lock:
            return Tally(
                self._sent,
                self._acked,
                self._rejected,
                dict(self._failed),
                dict(self._retries),
                self._requests,
                self._bytes,
                self._latency.counts(),
            )


class Pacer:
    """Admits requests at `rate` spans/s (None: at once) until `duration_s` has passed.

    Open loop: each request has a due time from the schedule, not from when the
    previous one finished; a slow endpoint makes requests late, not fewer, as
    far as the worker's threads allow.
    """

    def __init__(
        self,
        rate: float | None,
        duration_s: float,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate, self._stop, self._clock = rate, stop, clock
        self._start = clock()
        self._deadline = self._start + duration_s
        self._scheduled = 0
        self._lock = threading.Lock()

    def admit(self, spans: int) -> bool:
        """Waits for the next slot of `spans`; False once the run is over."""
        with self._lock:
            now = self._clock()
            if now >= self._deadline or self._stop.is_set():
                return False
            if self._rate is None:
                return True
            due = self._start + self._scheduled / self._rate
            self._scheduled += spans
        if due > now and self._stop.wait(due - now):
            return False
        return due < self._deadline
