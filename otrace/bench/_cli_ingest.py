"""`otrace bench ingest`: the ingest benchmark's command (table, progress, JSON)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from otrace.bench._options import dir_option, json_option, write_json
from otrace.bench.ingest import IngestBenchConfig, run_ingest_bench

__all__ = ["ingest_command"]


@click.command("ingest")
@click.option("--spans", default=200_000, show_default=True, help="S: spans sent per mode.")
@click.option("--per-request", default=500, show_default=True, help="Spans per Export request.")
@click.option("--clients", default=2, show_default=True, help="Client processes.")
@click.option("--threads", default=8, show_default=True, help="Concurrent Exports per client.")
@click.option("--oram-blocks", default=1 << 16, show_default=True, help="Node ORAM capacity.")
@click.option("--batch", default=32, show_default=True, help="ORAM batch size (blocks/commit).")
@click.option("--verify", is_flag=True, help="Read every span back through the ORAM too.")
@json_option
@dir_option
def ingest_command(json_path: Path | None, work_dir: Path | None, **options: Any) -> None:
    """Ingest throughput: a node under OTLP/gRPC load, ORAM vs encrypted mode.

    \b
    For each storage mode a fresh node starts in a temporary directory. Client
    processes prebuild realistic span trees (8 services, depth 4, 8 attributes)
    and send them over gRPC, honouring RetryInfo. Figures:
      spans/s        sustained: spans / time until the last one is in the
                     block device (not merely acknowledged)
      acked/s        spans / time until the last Export was acknowledged
      p50/p99 ms     Export latency as the client sees it
      lag ms         last acknowledgement -> last epoch committed
      lost           acknowledged spans not stored (must be 0)
    """
    cfg = IngestBenchConfig(**options)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="otrace-bench-", dir=work_dir) as tmp:
        with console.status("running") as status:

            def progress(mode: str, stored: int, acked: int) -> None:
                status.update(f"{mode}: {stored:,} of {acked:,} acknowledged spans stored")

            report = run_ingest_bench(cfg, Path(tmp), progress)
    console.print(_table(report))
    oram = report["oram_vs_encrypted"]
    console.print(
        f"ORAM mode runs at {oram:.0%} of encrypted mode; lost spans: {report['lost_spans']}"
    )
    write_json(console, json_path, report)


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"Ingest, {report['config']['spans']:,} spans per mode")
    for header in ("mode", "spans/s", "acked/s", "p50 ms", "p99 ms", "lag ms", "retries", "lost"):
        table.add_column(header, justify="left" if header == "mode" else "right")
    for mode, r in report["modes"].items():
        table.add_row(
            mode,
            f"{r['spans_per_s']:,.0f}",
            f"{r['ack_spans_per_s']:,.0f}",
            f"{r['p50_export_ms']:.0f}",
            f"{r['p99_export_ms']:.0f}",
            f"{r['searchable_lag_ms']:.0f}",
            str(r["retries"]),
            str(r["lost_spans"]),
        )
    return table
