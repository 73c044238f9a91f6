"""A load worker process: prebuild requests, wait for the start, send, report.

Workers are started with the `spawn` method, so everything they receive is
picklable and their entry point is this module's `worker_main`. They talk to
the parent through one queue of tuples:

    ("ready", index)                     requests built, waiting for `go`
    ("progress", index, Tally)           every half second while sending
    ("done", index, Tally, [ExpectedTrace, ...])
    ("error", index, message)
"""

from __future__ import annotations

import random
import signal
import threading
from typing import Any

import numpy as np

from otrace.loadtest._config import LoadConfig
from otrace.loadtest._ledger import NO_LIMIT, AckLedger
from otrace.loadtest._tally import Pacer, WorkerStats
from otrace.loadtest._templates import RequestTemplate, build_pool, round_mask
from otrace.loadtest._transport import GrpcTransport, HttpTransport, Transport, deliver

__all__ = ["make_transport", "report_progress", "worker_main"]

_PROGRESS_EVERY_S = 0.5


def make_transport(config: LoadConfig) -> Transport:
    if config.protocol == "grpc":
        return GrpcTransport(config.endpoint)
    return HttpTransport(config.endpoint)


def worker_main(config: LoadConfig, index: int, out: Any, go: Any, stop: Any) -> None:
    """Entry point of worker `index` (a spawned process)."""
    # Ctrl-C reaches the whole process group; the parent decides (through `stop`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if config.sdk:
            from otrace.loadtest._sdk import SdkLoad

            load: SdkLoad | _PrebuiltLoad = SdkLoad(config, index)
        else:
            load = _PrebuiltLoad(config, index)
    except Exception as exc:  # reported to the parent, which raises it as a ConfigError
        out.put(("error", index, f"{type(exc).__name__}: {exc}"))
        return
    out.put(("ready", index))
    while not go.wait(0.1):
        if stop.is_set():
            return
    done = threading.Event()
    reporter = threading.Thread(
        target=report_progress, args=(load.stats, index, out, done), daemon=True
    )
    reporter.start()
    try:
        load.run(stop)
    finally:
        done.set()
        reporter.join()
    out.put(("done", index, load.stats.tally(), load.ledger.sample()))


def report_progress(stats: WorkerStats, index: int, out: Any, done: threading.Event) -> None:
    while not done.wait(_PROGRESS_EVERY_S):
        out.put(("progress", index, stats.tally()))


class _PrebuiltLoad:
    """Cycles through a pool of prebuilt requests with `threads` concurrent senders."""

    def __init__(self, config: LoadConfig, index: int) -> None:
        self.config = config
        seed = config.seed * 7919 + index
        self.pool = build_pool(
            config.shape, config.worker_pool_spans(), config.spans_per_request, seed
        )
        self.salt = random.Random(seed).getrandbits(64)
        self.stats = WorkerStats()
        self.ledger = AckLedger(config.sample)
        self._lock = threading.Lock()
        self._next = 0  # requests taken so far: round = next // len(pool)

    def run(self, stop: threading.Event) -> None:
        pacer = Pacer(self.config.worker_rate(), self.config.duration_s, stop)
        threads = [
            threading.Thread(target=self._send_loop, args=(pacer, stop, i), daemon=True)
            for i in range(self.config.threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _take(self) -> tuple[RequestTemplate, int]:
        with self._lock:
            taken = self._next
            self._next += 1
        round_no, i = divmod(taken, len(self.pool))
        return self.pool[i], round_mask(self.salt, round_no)

    def _send_loop(self, pacer: Pacer, stop: threading.Event, thread_no: int) -> None:
        rnd = random.Random(thread_no)
        transport = make_transport(self.config)
        try:
            while True:
                template, mask = self._take()
                if not pacer.admit(template.spans):
                    return
                body = template.with_mask(mask)
                self.stats.sending(template.spans, len(body))
                result = deliver(transport, body, self.config.retry, rnd=rnd, stop=stop)
                attempt = result.attempt
                if attempt.code is None and attempt.rejected_spans == 0:
                    self._remember(template, mask, body)
                self.stats.answered(
                    template.spans,
                    attempt.code,
                    attempt.rejected_spans,
                    result.latency_s,
                    result.retries,
                )
        finally:
            transport.close()

    def _remember(self, template: RequestTemplate, mask: int, body: bytes) -> None:
        # With partial_success we cannot tell which spans were dropped, so only
        # fully accepted requests feed the ledger.
        keys = template.keys(mask)
        with self._lock:
            threshold = self.ledger.threshold()
            if threshold == NO_LIMIT:  # does not fit in a uint64 comparison
                picked = np.arange(template.traces)
            else:
                picked = np.nonzero(keys < np.uint64(threshold))[0]
            for trace in picked:
                spans = list(template.trace_spans(body, int(trace)))
                trace_id = spans[0][1][2:18]
                self.ledger.record(trace_id, spans)
