"""`otrace bench query`: trace-by-id and search latency, ORAM and encrypted modes side by side.

For each storage mode a fresh node starts in a temporary directory and takes
`spans` synthetic spans over OTLP/gRPC (the load-test generator: 8 services,
depth-4 trees, 8 attributes). Once every span is stored, one
analyst session (attested, as `otrace search` opens it) runs `queries` trace
lookups of random acknowledged trace ids and `queries` searches (service +
attribute (cloud.region) + duration >= 1 ms over the last hour), one at a time; latency is
measured at the client, end to end.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrace.bench.ingest import IngestBenchConfig, drive_load, wait_stored
from otrace.loadtest._traces import service_names
from otrace.settings import Settings

__all__ = ["QueryBenchConfig", "run_query_bench"]

Progress = Callable[[str, str], None]
SERVICES = service_names(8)
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")


@dataclass(frozen=True, slots=True)
class QueryBenchConfig:
    spans: int = 1_000_000
    queries: int = 100
    oram_blocks: int = 1 << 16
    batch: int = 32
    trace_reads: int = 16
    search_reads: int = 64


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _run_mode(
    mode: str, cfg: QueryBenchConfig, workdir: Path, progress: Progress | None
) -> dict[str, Any]:
    from collector import Node
    from query import QueryClient

    settings = Settings(
        data_dir=workdir / mode,
        platform_dir=workdir / "platform",
        otlp_grpc="127.0.0.1:0",
        otlp_http="127.0.0.1:0",
        query="127.0.0.1:0",
        metrics="",
        storage=mode,
        oram_blocks=cfg.oram_blocks,
        oram_batch=cfg.batch,
        trace_reads=cfg.trace_reads,
        search_reads=cfg.search_reads,
    )
    node = Node(settings)
    node.start()
    try:
        assert node.grpc is not None and node.query is not None
        if progress:
            progress(mode, f"loading {cfg.spans:,} spans")
        load, _, _ = drive_load(node.grpc.address, IngestBenchConfig(spans=cfg.spans))
        wait_stored(node, load.acked_spans, mode, None)
        rnd = random.Random(7)
        trace_ms: list[float] = []
        search_ms: list[float] = []
        found = truncated = 0
        with QueryClient.connect(
            f"127.0.0.1:{node.query.port}", key_file=node.credential_path
        ) as client:
            for i in range(cfg.queries):
                if progress:
                    progress(mode, f"query {i + 1} of {cfg.queries}")
                tid = rnd.choice(load.trace_sample)
                started = time.perf_counter()
                answer = client.fetch_trace(tid)
                trace_ms.append((time.perf_counter() - started) * 1000)
                found += bool(answer.data.resource_spans)
                started = time.perf_counter()
                hits = client.search(
                    service=rnd.choice(SERVICES),
                    attributes=[("cloud.region", rnd.choice(REGIONS))],
                    min_duration_ns=1_000_000,
                    start_ns=time.time_ns() - 3600 * 10**9,
                    end_ns=time.time_ns(),
                )
                search_ms.append((time.perf_counter() - started) * 1000)
                truncated += hits.truncated
        stats = node.stats()
    finally:
        node.stop()
    return {
        "stored_spans": int(str(stats["spans"])),
        "trace_by_id_p50_ms": statistics.median(trace_ms),
        "trace_by_id_p99_ms": _percentile(trace_ms, 0.99),
        "search_p50_ms": statistics.median(search_ms),
        "search_p99_ms": _percentile(search_ms, 0.99),
        "traces_found": found,
        "searches_truncated": truncated,
    }


def run_query_bench(
    cfg: QueryBenchConfig, workdir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Runs both modes; returns the figures the CLI prints and writes as JSON."""
    modes = {mode: _run_mode(mode, cfg, workdir, progress) for mode in ("oram", "encrypted")}
    oram, enc = modes["oram"], modes["encrypted"]
    return {
        **{key: oram[key] for key in ("trace_by_id_p50_ms", "trace_by_id_p99_ms")},
        **{key: oram[key] for key in ("search_p50_ms", "search_p99_ms")},
        "trace_by_id_p50_vs_encrypted": oram["trace_by_id_p50_ms"] / enc["trace_by_id_p50_ms"],
        "search_p50_vs_encrypted": oram["search_p50_ms"] / enc["search_p50_ms"],
        "modes": modes,
        "config": {name: getattr(cfg, name) for name in cfg.__dataclass_fields__},
    }
