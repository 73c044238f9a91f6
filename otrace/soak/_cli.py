"""`otrace soak`: flags in, one `run_soak` call, a rich report out."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from otrace.soak._soak import SoakConfig, SoakReport, run_soak

__all__ = ["soak"]


@click.command("soak")
@click.option("--kills", type=int, default=50, show_default=True, help="SIGKILLs to deliver.")
@click.option(
    "--storage", type=click.Choice(["oram", "encrypted"]), default="oram", show_default=True,
    help="The node's block device.",
)  # fmt: skip
@click.option("--store", default="", help="SQLAlchemy URL of the store. [SQLite in --dir]")
@click.option("--rate", type=float, default=300.0, show_default=True, help="Spans/s offered.")
@click.option("--max-gap", type=float, default=3.0, show_default=True,
              help="Longest wait (s) between a node serving and its next kill.")  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of kill timing.")
@click.option(
    "--dir", "root", type=click.Path(file_okay=False, path_type=Path),
    help="Where the node's data and platform directories go. [a temporary directory]",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    is_flag=False, flag_value=Path("-"), help="Also write the figures as JSON ('-' or a file).",
)  # fmt: skip
def soak(
    kills: int,
    storage: str,
    store: str,
    rate: float,
    max_gap: float,
    seed: int,
    root: Path | None,
    json_path: Path | None,
) -> None:
    """Crash recovery under load: SIGKILL `otrace serve` N times, then read back every span.

    \b
    Starts `otrace serve` in its own process group on fixed loopback ports and
    loads it with `otrace loadtest` traces (--rate spans/s, retried as the OTel
    exporters do). At random moments (half within a second of a restart,
    while the recovered journal is drained; the rest up to --max-gap later)
    host and enclave are SIGKILLed together and the node restarted on the same
    data. At the end every acknowledged span is read back through the query
    API (attested session, loadtest read-back, sample=all). Exit status 1 if
    any acknowledged span is lost or altered.

    \b
    Figures: kills, restarts, acked spans, lost / corrupt spans, recovery
    time (spawn -> serving again) p50 / p99 / max, peak RSS of node+enclave.
    """
    console = Console(stderr=json_path == Path("-"))
    if kills < 1:
        raise click.UsageError("--kills must be at least 1")
    with tempfile.TemporaryDirectory(prefix="otrace-soak-") as tmp:
        config = SoakConfig(
            root=root or Path(tmp),
            kills=kills,
            storage=storage,
            store=store,
            rate=rate,
            max_gap_s=max(max_gap, 1.0),
            seed=seed,
        )
        report = run_soak(config, progress=lambda line: console.print(line))
    console.print(_table(report))
    figures = report.to_json()
    if json_path == Path("-"):
        click.echo(json.dumps(figures, indent=2))
    elif json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"JSON written to {json_path}")
    if report.lost_spans or report.corrupt_spans:
        for line in report.verified.problems():
            console.print(f"[red]{line}[/red]")
        raise click.ClickException(
            f"{report.lost_spans:,} acknowledged spans lost, {report.corrupt_spans:,} corrupt"
        )


def _table(report: SoakReport) -> Table:
    t = report.load.tally
    table = Table(title=f"otrace soak ({report.config.storage})", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("kills / restarts", f"{report.kills} / {report.restarts}"),
        ("acknowledged spans", f"{t.acked_spans:,} of {t.sent_spans:,} sent"),
        (
            "verified traces",
            f"{report.verified.verified_traces:,} of {len(report.verified.checks):,}",
        ),
        ("lost spans", f"{report.lost_spans:,}"),
        ("corrupt spans", f"{report.corrupt_spans:,}"),
        (
            "recovery p50 / p99 / max",
            f"{report.recovery_percentile_s(50):.2f} / {report.recovery_percentile_s(99):.2f} / "
            f"{max(report.recovery_s, default=0.0):.2f} s",
        ),
        ("peak RSS (node + enclave)", f"{report.peak_rss_bytes / 2**20:,.0f} MiB"),
        ("duration", f"{report.duration_s:.0f} s"),
    ]
    rows += [(f"  unacknowledged: {code}", f"{n:,} spans") for code, n in sorted(t.failed.items())]
    for name, value in rows:
        table.add_row(name, value)
    return table
