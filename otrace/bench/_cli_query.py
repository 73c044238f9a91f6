"""`otrace bench query`: the query benchmark's command (table, progress, JSON)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from otrace.bench._options import dir_option, json_option, write_json
from otrace.bench.query import QueryBenchConfig, run_query_bench

__all__ = ["query_command"]


@click.command("query")
@click.option("--spans", default=1_000_000, show_default=True, help="S: spans loaded per mode.")
@click.option("--queries", default=100, show_default=True, help="Trace lookups and searches each.")
@click.option("--oram-blocks", default=1 << 16, show_default=True, help="Node ORAM capacity.")
@click.option("--search-reads", default=64, show_default=True, help="ORAM reads per search.")
@click.option("--trace-reads", default=16, show_default=True, help="ORAM reads per trace lookup.")
@json_option
@dir_option
def query_command(json_path: Path | None, work_dir: Path | None, **options: Any) -> None:
    """Query latency: trace by id and search, ORAM vs encrypted mode.

    \b
    For each storage mode a fresh node loads S synthetic spans over OTLP/gRPC,
    then one attested analyst session runs the lookups and searches one at a
    time (search: service + attribute + duration >= 1ms over the last hour).
    Latency is end to end at the client. Every query spends its fixed ORAM
    read budget, whatever it matches.
    """
    cfg = QueryBenchConfig(**options)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="otrace-bench-", dir=work_dir) as tmp:
        with console.status("running") as status:
            report = run_query_bench(
                cfg, Path(tmp), lambda mode, what: status.update(f"{mode}: {what}")
            )
    table = Table(title=f"Queries over {cfg.spans:,} spans ({cfg.queries} of each)")
    for header in (
        "mode",
        "trace p50 ms",
        "trace p99 ms",
        "search p50 ms",
        "search p99 ms",
        "found",
        "truncated",
    ):
        table.add_column(header, justify="left" if header == "mode" else "right")
    for mode, r in report["modes"].items():
        table.add_row(
            mode,
            f"{r['trace_by_id_p50_ms']:.1f}",
            f"{r['trace_by_id_p99_ms']:.1f}",
            f"{r['search_p50_ms']:.1f}",
            f"{r['search_p99_ms']:.1f}",
            f"{r['traces_found']}/{cfg.queries}",
            str(r["searches_truncated"]),
        )
    console.print(table)
    console.print(
        f"ORAM / encrypted p50: trace {report['trace_by_id_p50_vs_encrypted']:.2f}x, "
        f"search {report['search_p50_vs_encrypted']:.2f}x"
    )
    write_json(console, json_path, report)
