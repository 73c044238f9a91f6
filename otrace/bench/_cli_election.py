"""`otrace bench election`: SSLE latency per cluster size (table, progress, JSON)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from otrace.bench._options import write_json
from otrace.bench.election import (
    PHASES,
    ElectionBenchConfig,
    ElectionBenchReport,
    run_election_bench,
)

__all__ = ["election_command"]


def _replica_counts(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of replica counts, e.g. 3,16,64") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("every replica count must be at least 1")
    return counts


_HELP = """Single Secret Leader Election latency for several cluster sizes, in one run.

\b
Each term runs the whole protocol in this process (ristretto255 via
libsodium, no SQL, no network). Phases, median and p99 over the terms:
""" + "\n".join(f"  {phase:<15} {text}" for phase, text in PHASES.items())


@click.command("election", help=_HELP)
@click.option(
    "--replicas",
    default="3,16,64",
    show_default=True,
    callback=_replica_counts,
    help="Cluster sizes to measure, comma-separated.",
)
@click.option("--terms", default=50, show_default=True, help="Terms timed per cluster size.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures as flat JSON to this file.",
)
def election_command(replicas: tuple[int, ...], terms: int, json_path: Path | None) -> None:
    if terms < 1:
        raise click.BadParameter("at least one term", param_hint="--terms")
    console = Console()
    config = ElectionBenchConfig(replicas=replicas, terms=terms)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        report = run_election_bench(config, progress)
    console.print(_table(report))
    write_json(console, json_path, report.to_json())


def _table(report: ElectionBenchReport) -> Table:
    table = Table(title=f"SSLE latency, {report.config.terms} terms per size (ms, median / p99)")
    table.add_column("phase")
    for n in report.results:
        table.add_column(f"{n} replicas", justify="right")
    for phase in PHASES:
        cells = [
            f"{s.median_ms:.3f} / {s.p99_ms:.3f}"
            for s in (report.results[n][phase] for n in report.results)
        ]
        table.add_row(phase, *cells, style="bold" if phase == "total" else None)
    return table
