"""Prometheus metrics at /metrics, gathered on scrape from the host and the enclave."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

import cbor2
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from collector._group_commit import GroupCommitter
from otrace.errors import ConfigError, OTraceError

__all__ = ["MetricsServer"]

_EPOCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# How often the serving thread looks for a stop request, so how long `stop` can wait
# (prometheus_client's `start_http_server` polls every 0.5 s, and every node stop waited).
_STOP_POLL_S = 0.05


class _NodeCollector(Collector):
    def __init__(self, committer: GroupCommitter, stats: Callable[[], dict[str, Any]]) -> None:
        self._committer = committer
        self._stats = stats
        self._epoch_counts = [0] * (len(_EPOCH_BUCKETS) + 1)
        self._epoch_sum = 0.0

    def collect(self) -> Iterator[Any]:
        c = self._committer
        yield CounterMetricFamily("otrace_spans_accepted", "Spans journaled", c.accepted_spans)
        yield CounterMetricFamily(
            "otrace_spans_rejected",
            "Spans dropped by validation (partial success)",
            c.rejected_spans,
        )
        yield CounterMetricFamily(
            "otrace_requests_refused", "Exports refused to shed load", c.refused_requests
        )
        try:
            stats = self._stats()
        except OTraceError:
            return
        yield GaugeMetricFamily(
            "otrace_journal_depth", "Journal entries not yet in the ORAM", stats["journal_depth"]
        )
        # Batches, not logical accesses, and no stash size: the host must not learn
        # more about the ORAM than the storage does (see SECURITY.md).
        yield CounterMetricFamily(
            "otrace_oram_batches", "ORAM batches committed (each padded)", stats["oram_batches"]
        )
        yield GaugeMetricFamily(
            "otrace_epoch_failing",
            "1 while epochs fail and are being retried",
            1 if stats["last_error"] else 0,
        )
        yield CounterMetricFamily("otrace_spans_stored", "Spans stored in the ORAM", stats["spans"])
        yield self._epochs(stats["epoch_seconds"])

    def _epochs(self, seconds: list[float]) -> HistogramMetricFamily:
        for value in seconds:
            self._epoch_sum += value
            index = next(
                (i for i, b in enumerate(_EPOCH_BUCKETS) if value <= b), len(_EPOCH_BUCKETS)
            )
            self._epoch_counts[index] += 1
        running, buckets = 0, []
        for bound, count in zip(
            (*map(str, _EPOCH_BUCKETS), "+Inf"), self._epoch_counts, strict=True
        ):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily(
            "otrace_epoch_seconds",
            "Time to write one epoch to the ORAM",
            buckets=buckets,
            sum_value=self._epoch_sum,
        )


class MetricsServer:
    """Serves the node's metrics in the Prometheus text format."""

    def __init__(
        self, address: str, committer: GroupCommitter, ecall: Callable[[str, bytes], bytes]
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(committer, lambda: cbor2.loads(ecall("stats", b""))))
        host, _, port = address.rpartition(":")
        try:
            self._server = _HttpServer(host, int(port))
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {address}: {exc}") from None
        self._server.set_app(make_wsgi_app(self.registry))
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(_STOP_POLL_S,),
            name="otrace-metrics",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _HttpServer(ThreadingWSGIServer):
    """prometheus_client's server (a daemon thread per scrape) on an IPv4 or IPv6
    address, as `start_http_server` binds it."""

    def __init__(self, host: str, port: int) -> None:
        info = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = info[0]
        self.address_family = family
        super().__init__((str(sockaddr[0]), port), _QuietHandler)
