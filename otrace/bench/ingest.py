"""`otrace bench ingest`: a node under OTLP/gRPC load, ORAM and encrypted modes side by side.

For each storage mode a fresh node starts in a temporary directory; client
processes prebuild their requests (realistic span trees), wait at a barrier,
then send over gRPC with several threads each. Throughput is *sustained*: spans
divided by the time until the last span is committed to the block device, not
merely acknowledged. Searchable lag is the time from the last acknowledgement
to the last epoch commit.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrace.bench._loadgen import LoadResult, build_requests, send_requests
from otrace.settings import Settings

__all__ = ["IngestBenchConfig", "ModeResult", "drive_load", "run_ingest_bench", "wait_stored"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class IngestBenchConfig:
    spans: int = 200_000
    per_request: int = 500
    clients: int = 2
    threads: int = 8
    oram_blocks: int = 1 << 16
    batch: int = 32
    verify: bool = False


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: str
    acked_spans: int
    stored_spans: int
    lost_spans: int
    failed_spans: int
    retries: int
    spans_per_s: float
    ack_spans_per_s: float
    p50_export_ms: float
    p99_export_ms: float
    searchable_lag_ms: float


def _client(
    target: str,
    spans: int,
    per_request: int,
    seed: int,
    threads: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    trace_ids: list[bytes] = []
    requests = build_requests(spans, per_request, seed, trace_ids=trace_ids)
    ready.wait()
    go.wait()
    result = send_requests(target, requests, threads)
    sample = random.Random(seed).sample(trace_ids, min(len(trace_ids), 500))
    out.put((result.acked_spans, result.failed_spans, result.retries, result.latencies_ms, sample))


def _run_mode(
    mode: str, cfg: IngestBenchConfig, workdir: Path, progress: Progress | None
) -> ModeResult:
    from collector import Node

    settings = Settings(
        data_dir=workdir / mode,
        platform_dir=workdir / "platform",
        otlp_grpc="127.0.0.1:0",
        otlp_http="127.0.0.1:0",
        metrics="",
        storage=mode,
        oram_blocks=cfg.oram_blocks,
        oram_batch=cfg.batch,
    )
    node = Node(settings)
    node.start()
    try:
        assert node.grpc is not None
        load, started, acked_at = drive_load(node.grpc.address, cfg)
        stored, stored_at = wait_stored(node, load.acked_spans, mode, progress)
        if cfg.verify:
            from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

            data = TracesData.FromString(node.scan())
            stored = sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)
    finally:
        node.stop()
    lat = sorted(load.latencies_ms) or [0.0]
    return ModeResult(
        mode,
        load.acked_spans,
        stored,
        max(0, load.acked_spans - stored),
        load.failed_spans,
        load.retries,
        load.acked_spans / (stored_at - started),
        load.acked_spans / (acked_at - started),
        statistics.median(lat),
        lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        (stored_at - acked_at) * 1000,
    )


def drive_load(target: str, cfg: IngestBenchConfig) -> tuple[LoadResult, float, float]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Barrier(cfg.clients + 1), ctx.Event(), ctx.Queue()
    share = cfg.spans // cfg.clients
    procs = [
        ctx.Process(
            target=_client,
            args=(
                target,
                share + (i < cfg.spans % cfg.clients),
                cfg.per_request,
                i + 1,
                cfg.threads,
                ready,
                go,
                out,
            ),
        )
        for i in range(cfg.clients)
    ]
    for p in procs:
        p.start()
    ready.wait()  # every client has built its requests
    started = time.perf_counter()
    go.set()
    load = LoadResult()
    for _ in procs:
        acked, failed, retries, latencies, sample = out.get()
        load.acked_spans += acked
        load.failed_spans += failed
        load.retries += retries
        load.latencies_ms.extend(latencies)
        load.trace_sample.extend(sample)
    acked_at = time.perf_counter()
    for p in procs:
        p.join()
    return load, started, acked_at


def wait_stored(node: Any, acked: int, mode: str, progress: Progress | None) -> tuple[int, float]:
    deadline = time.monotonic() + 600
    while True:
        stats = node.stats()
        stored = int(stats["spans"])
        if progress is not None:
            progress(mode, stored, acked)
        if (stored >= acked and stats["journal_depth"] == 0) or time.monotonic() > deadline:
            return stored, time.perf_counter()
        time.sleep(0.02)


def run_ingest_bench(
    cfg: IngestBenchConfig, workdir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Runs both modes; returns flat figures (the JSON the CLI writes)."""
    results = {mode: _run_mode(mode, cfg, workdir, progress) for mode in ("oram", "encrypted")}
    oram, enc = results["oram"], results["encrypted"]
    return {
        "oram_spans_per_s": oram.spans_per_s,
        "encrypted_spans_per_s": enc.spans_per_s,
        "oram_vs_encrypted": oram.spans_per_s / enc.spans_per_s,
        "p50_export_ms": oram.p50_export_ms,
        "p99_export_ms": oram.p99_export_ms,
        "searchable_lag_ms": oram.searchable_lag_ms,
        "lost_spans": oram.lost_spans + enc.lost_spans,
        "modes": {mode: _fields(r) for mode, r in results.items()},
        "config": _fields(cfg),
    }


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}
