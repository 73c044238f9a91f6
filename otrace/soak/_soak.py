"""Crash recovery under load: SIGKILL `otrace serve` at random moments, restart it,
and read every acknowledged span back through the query API.

    report = run_soak(SoakConfig(root=Path("soak"), kills=10))
    assert report.lost_spans == 0 and report.corrupt_spans == 0

The load comes from `otrace.loadtest` (worker processes sending prebuilt
traces at a fixed rate, retrying as the OTel exporters do), running across
every kill: while the node is down its Exports fail with UNAVAILABLE and are
retried against the restarted node on the same ports. Only spans the node
acknowledged enter the ledger (sample: all). Each kill waits until
acknowledgements flow again after the previous restart, then lands while the
node is busy: half within half a second (the backlog of retried Exports is
being journaled and the recovered journal drained into the ORAM, compaction
included), the rest up to `max_gap_s` later.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otrace.errors import UnavailableError
from otrace.loadtest import (
    Endpoint,
    LiveStats,
    LoadConfig,
    LoadReport,
    RetryPolicy,
    TraceShape,
    VerifyReport,
    run_load,
    verify_traces,
)
from otrace.soak._serve import ServeOptions, ServeProcess

__all__ = ["SoakConfig", "SoakReport", "run_soak"]


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """A crash-recovery run: where, how many kills, how much load."""

    root: Path
    kills: int = 10
    storage: str = "oram"
    store: str = ""
    rate: float = 300.0  # spans/s offered, over all workers
    workers: int = 1
    threads: int = 8
    spans_per_request: int = 20
    min_gap_s: float = 0.0  # after acknowledgements flow again
    max_gap_s: float = 3.0
    oram_blocks: int = 8192
    seed: int = 1
    verify_wait_s: float = 30.0
    shape: TraceShape = field(default_factory=lambda: TraceShape(6, 5, 4, 0.02))  # ~9 spans


@dataclass(frozen=True, slots=True)
class SoakReport:
    """What happened and what came back."""

    config: SoakConfig
    kills: int
    restarts: int
    load: LoadReport
    verified: VerifyReport
    recovery_s: tuple[float, ...]  # each restart: spawn -> serving again
    peak_rss_bytes: int
    duration_s: float
    kill_at_s: tuple[float, ...]  # seconds after acknowledgements flowed again
    verify_s: float = 0.0

    @property
    def lost_spans(self) -> int:
        return self.verified.lost_spans

    @property
    def corrupt_spans(self) -> int:
        return self.verified.corrupt_spans

    def recovery_percentile_s(self, q: float) -> float:
        if not self.recovery_s:
            return 0.0
        ordered = sorted(self.recovery_s)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def to_json(self) -> dict[str, Any]:
        t = self.load.tally
        return {
            "kills": self.kills,
            "restarts": self.restarts,
            "storage": self.config.storage,
            "sent_spans": t.sent_spans,
            "acked_spans": t.acked_spans,
            "failed_spans": t.failed_spans,
            "verified_traces": self.verified.verified_traces,
            "sampled_traces": len(self.verified.checks),
            "lost_spans": self.lost_spans,
            "corrupt_spans": self.corrupt_spans,
            "recovery_p50_s": round(self.recovery_percentile_s(50), 3),
            "recovery_p99_s": round(self.recovery_percentile_s(99), 3),
            "recovery_max_s": round(max(self.recovery_s, default=0.0), 3),
            "peak_rss_mb": round(self.peak_rss_bytes / 2**20, 1),
            "duration_s": round(self.duration_s, 1),
            "verify_s": round(self.verify_s, 1),
            "kill_after_ready_s": [round(k, 2) for k in self.kill_at_s],
            "errors": dict(sorted(t.failed.items())),
            "retries": dict(sorted(t.retries.items())),
        }


class _RssWatch(threading.Thread):
    def __init__(self, serve: ServeProcess) -> None:
        super().__init__(name="otrace-soak-rss", daemon=True)
        self.serve = serve
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            self.peak = max(self.peak, self.serve.rss())


class _Load(threading.Thread):
    """`run_load` on a thread; `await_flow` returns once more spans were acknowledged."""

    def __init__(self, config: LoadConfig) -> None:
        super().__init__(name="otrace-soak-load", daemon=True)
        self.config = config
        self.stop = threading.Event()
        self._flowing = threading.Event()
        self._acked = 0
        self.report: LoadReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = run_load(self.config, progress=self._progress, stop=self.stop)
        except BaseException as exc:  # re-raised by the harness thread
            self.error = exc

    def _progress(self, stats: LiveStats) -> None:
        if stats.tally.acked_spans > self._acked:
            self._acked = stats.tally.acked_spans
            self._flowing.set()

    def await_flow(self) -> None:
        self._flowing.clear()
        while not self._flowing.wait(0.1):
            if self.error is not None or not self.is_alive():
                raise self.error or UnavailableError("the load stopped early")

    def finish(self) -> LoadReport:
        self.stop.set()
        self.join()
        if self.error is not None:
            raise self.error
        if self.report is None:
            raise UnavailableError("the load ended without a report")
        return self.report


def _kill_gap(config: SoakConfig, rnd: random.Random, n: int) -> float:
    """Seconds from acknowledgements flowing again to the kill: half early, half later."""
    if n % 2 == 0:
        return rnd.uniform(config.min_gap_s, 0.5 + config.min_gap_s)
    return rnd.uniform(0.5, config.max_gap_s)


def run_soak(config: SoakConfig, *, progress: Callable[[str], None] | None = None) -> SoakReport:
    """Kills and restarts the node `config.kills` times under load, then verifies."""
    say = progress or (lambda _msg: None)
    rnd = random.Random(config.seed)
    serve = ServeProcess(
        ServeOptions(
            config.root / "data",
            config.root / "platform",
            storage=config.storage,
            store=config.store,
            oram_blocks=config.oram_blocks,
        )
    )
    started = time.monotonic()
    recovery = [serve.start()]
    say(f"node up in {recovery[0]:.2f} s; loading {config.rate:g} spans/s")
    watch = _RssWatch(serve)
    watch.start()
    load = _Load(_load_config(config, serve.grpc_port))
    load.start()
    kill_at: list[float] = []
    try:
        for n in range(config.kills):
            # Each kill waits until acknowledgements flow again after the restart (the
            # exporters' reconnect backoff), so it lands on a node taking load.
            load.await_flow()
            kill_at.append(_kill_gap(config, rnd, n))
            time.sleep(kill_at[-1])
            serve.kill()
            recovery.append(serve.start())
            say(f"kill {n + 1}/{config.kills} at +{kill_at[-1]:.2f} s; up in {recovery[-1]:.2f} s")
        report = load.finish()
        say("load stopped; verifying every acknowledged span through the query API")
        verify_started = time.monotonic()
        verified = _verify(serve, report, config.verify_wait_s)
        verify_s = time.monotonic() - verify_started
    finally:
        load.stop.set()
        load.join()
        watch.halt.set()
        serve.stop()
    return SoakReport(
        config,
        kills=config.kills,
        restarts=serve.starts - 1,
        load=report,
        verified=verified,
        recovery_s=tuple(recovery[1:]),
        peak_rss_bytes=watch.peak,
        duration_s=time.monotonic() - started,
        kill_at_s=tuple(kill_at),
        verify_s=verify_s,
    )


def _load_config(config: SoakConfig, port: int) -> LoadConfig:
    return LoadConfig(
        Endpoint(f"127.0.0.1:{port}", timeout_s=10.0),
        rate=config.rate,
        duration_s=86400.0,  # until the kills are done: the harness stops it
        workers=config.workers,
        threads=config.threads,
        shape=config.shape,
        spans_per_request=config.spans_per_request,
        pool_spans=5000,
        sample=None,
        # Long enough to ride out a restart; every answer counts only once acknowledged.
        retry=RetryPolicy(max_attempts=50, initial_backoff_s=0.2, max_backoff_s=1.0, budget_s=120),
        seed=config.seed,
    )


def _verify(serve: ServeProcess, load: LoadReport, wait_s: float) -> VerifyReport:
    from query import QueryClient  # the CLI imports this package; queries only here

    with QueryClient.connect(
        f"127.0.0.1:{serve.query_port}", key_file=serve.credential, timeout=120
    ) as client:
        return verify_traces(client, load.sample, wait_s=wait_s)
