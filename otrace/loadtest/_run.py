"""Running a load test: start the workers, aggregate their progress, build the report.

    report = run_load(LoadConfig(Endpoint("127.0.0.1:4317"), rate=20_000, duration_s=30))
    print(report.to_json()["acked_spans"])

Workers build their requests first; the clock starts when every one of them
is ready, so building is never measured. Progress reaches the caller through
an optional callback; drawing it is the CLI's job.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from otrace.errors import ConfigError, UnavailableError
from otrace.loadtest._config import LoadConfig
from otrace.loadtest._histogram import LatencyHistogram
from otrace.loadtest._ledger import ExpectedTrace, merge_samples
from otrace.loadtest._tally import Tally, sum_tallies
from otrace.loadtest._worker import worker_main

__all__ = ["LiveStats", "LoadReport", "run_load"]

_READY_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class LiveStats:
    """What the run looks like now (for a progress display)."""

    elapsed_s: float
    duration_s: float
    tally: Tally
    spans_per_s: float  # acknowledged, over the last second or so

    def percentile_ms(self, q: float) -> float:
        return LatencyHistogram(self.tally.latency).percentile_ms(q)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The outcome of a load test (before any read-back verification)."""

    config: LoadConfig
    tally: Tally
    duration_s: float
    sample: tuple[ExpectedTrace, ...]

    @property
    def spans_per_s(self) -> float:
        return self.tally.acked_spans / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return LatencyHistogram(self.tally.latency).percentile_ms(q)

    def to_json(self) -> dict[str, Any]:
        """Flat figures; verification keys are None until a verification fills them in."""
        t = self.tally
        c = self.config
        return {
            "sent_spans": t.sent_spans,
            "acked_spans": t.acked_spans,
            "rejected_spans": t.rejected_spans,
            "failed_spans": t.failed_spans,
            "spans_per_s": round(self.spans_per_s, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p95_ms": round(self.percentile_ms(95), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "errors": dict(sorted(t.failed.items())),
            "retries": dict(sorted(t.retries.items())),
            "requests": t.requests,
            "request_bytes": t.sent_bytes,
            "duration_s": round(self.duration_s, 3),
            "sampled_traces": len(self.sample),
            "verified_traces": None,
            "lost_spans": None,
            "corrupt_spans": None,
            "config": {
                "endpoint": c.endpoint.target,
                "protocol": c.protocol,
                "gzip": c.endpoint.gzip,
                "mode": "sdk" if c.sdk else "prebuilt",
                "rate": c.rate,
                "duration_s": c.duration_s,
                "workers": c.workers,
                "threads": c.threads,
                "spans_per_request": c.spans_per_request,
                "services": c.shape.services,
                "depth": c.shape.depth,
                "attrs": c.shape.attrs,
                "error_rate": c.shape.error_rate,
                "sample": c.sample,
            },
        }


def run_load(
    config: LoadConfig,
    *,
    progress: Callable[[LiveStats], None] | None = None,
    stop: threading.Event | None = None,
) -> LoadReport:
    """Runs the load test to the end (or until `stop` is set) and reports what happened."""
    ctx = multiprocessing.get_context("spawn")
    out, go, halt = ctx.Queue(), ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=worker_main, args=(config, i, out, go, halt), daemon=True)
        for i in range(config.workers)
    ]
    for p in procs:
        p.start()
    try:
        _await_ready(out, procs)
        go.set()
        started = time.monotonic()
        tallies, samples, ended = _collect(config, out, procs, started, progress, stop, halt)
    finally:
        halt.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return LoadReport(
        config,
        sum_tallies(tallies.values()),
        ended - started,
        tuple(merge_samples(samples, config.sample)),
    )


def _await_ready(out: Any, procs: list[Any]) -> None:
    ready = 0
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while ready < len(procs):
        message = _next(out, procs, deadline)
        if message[0] == "error":
            raise ConfigError(f"load worker {message[1]} could not start: {message[2]}")
        if message[0] == "ready":
            ready += 1


def _collect(
    config: LoadConfig,
    out: Any,
    procs: list[Any],
    started: float,
    progress: Callable[[LiveStats], None] | None,
    stop: threading.Event | None,
    halt: Any,
) -> tuple[dict[int, Tally], list[list[ExpectedTrace]], float]:
    tallies: dict[int, Tally] = {}
    samples: list[list[ExpectedTrace]] = []
    finished = 0
    rate = _RateMeter(started)
    # Retries may run past the duration; wait for them up to their budget.
    deadline = started + config.duration_s + config.retry.budget_s + 4 * config.endpoint.timeout_s
    ended = started
    while finished < len(procs):
        if stop is not None and stop.is_set():
            halt.set()
        message = _next(out, procs, deadline + 60, poll=0.25)
        kind = message[0]
        if kind in ("progress", "done"):
            tallies[message[1]] = message[2]
        if kind == "done":
            samples.append(message[3])
            finished += 1
            ended = time.monotonic()
        if progress is not None and kind != "idle":
            now = time.monotonic()
            total = sum_tallies(tallies.values())
            progress(LiveStats(now - started, config.duration_s, total, rate.update(now, total)))
    return tallies, samples, ended


class _RateMeter:
    """Acknowledged spans per second over a sliding window of about one second."""

    def __init__(self, started: float) -> None:
        self._points: list[tuple[float, int]] = [(started, 0)]

    def update(self, now: float, tally: Tally) -> float:
        self._points.append((now, tally.acked_spans))
        while len(self._points) > 2 and now - self._points[1][0] >= 1.0:
            self._points.pop(0)
        (t0, a0), (t1, a1) = self._points[0], self._points[-1]
        return (a1 - a0) / (t1 - t0) if t1 > t0 else 0.0


def _next(out: Any, procs: list[Any], deadline: float, poll: float = 0.5) -> tuple[Any, ...]:
    """The next worker message; ("idle",) after `poll` seconds without one."""
    try:
        return tuple(out.get(timeout=poll))
    except queue.Empty:
        pass
    if time.monotonic() > deadline:
        raise UnavailableError("load workers stopped reporting; giving up")
    dead = [p for p in procs if p.exitcode not in (None, 0)]
    if dead:
        raise UnavailableError(
            f"a load worker died (exit code {dead[0].exitcode}); see its output above"
        )
    return ("idle",)
