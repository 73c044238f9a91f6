"""`otrace bench ...`: click commands that run a measurement and draw it with rich."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from oram_store import DEFAULT_BLOCK_SIZE
from otrace.bench.oram import OramBenchConfig, OramBenchReport, run_oram_bench

__all__ = ["bench"]


@click.group()
def bench() -> None:
    """Side-by-side benchmarks that print ratios measured in one run."""


_ORAM_HELP = """Path ORAM throughput: otrace against PyORAM and a bare-storage floor.

\b
Runs, one after the other in this process, on N blocks of B bytes with the
top C tree levels cached in memory:
  otrace single    A mixed reads/writes (50/50) of random blocks, one
                   read()/write() call each, on a batch_size=1 tree
  otrace batched   the same number of accesses issued as access_batch()
                   calls of K distinct blocks on a batch_size=K tree
  otrace grouped   the same, G batches committed together (grouped(), as
                   ingest writes an epoch); it takes half of each round's
                   batches, otrace batched the other half
                   (both with a monotonic counter, as `otrace serve` runs:
                   written after every commit, fsync'ed every 64 commits)
  PyORAM           pyoram's PathORAM on file storage, same N, B, C and the
                   same access sequence as "otrace single"
  PyORAM + fsync   the same again, its file flushed and fsync'ed after
                   every access (PyORAM itself never syncs; otrace commits
                   every access durably)
  storage floor    what one single access costs the SQL store alone: one
                   SELECT of the height+1-C uncached buckets of a random
                   path and height+1 UPDATEs of random blobs in one
                   transaction, same SQLite pragmas, rows and blob size,
                   no crypto and no ORAM logic
  storage floor    the same for a batch: the union of K random paths per
    (K=...)        transaction, A/K transactions
                   (each floor alternates with its otrace variant in 20
                   rounds, so both see the same disk load)

\b
Figures:
  ops/s       logical accesses per second (a batch of K counts K)
  ms/op       wall time per logical access
  x PyORAM    ops/s divided by PyORAM's ops/s (higher is better)
  x floor     ms/op divided by the ms/op of the floor with the same
              pattern (batched and grouped otrace: the batched floor; the
              others: the single-access floor): how far the variant is from
              what the storage alone costs (1.00x is the floor itself)
  init        seconds to build and open the empty single-access tree
  peak RSS    largest resident memory of the process (whole run, during
              init, and during the otrace variants only)

Note: otrace commits every access durably (SQLite WAL, synchronous=FULL);
PyORAM's file storage never calls fsync ("x PyORAM" compares with PyORAM as
it ships). Each timed loop starts after a WAL checkpoint and a sync, so no
variant pays for the previous one's writes. Each database is deleted as soon
as it is measured, so the disk holds at most two trees at a time (each about
N*2.3*B bytes at N blocks). Figures vary from run to run by 10-30% on a shared
disk: compare ratios from one run.
"""


def _register() -> None:
    from otrace.bench._cli_election import election_command
    from otrace.bench._cli_faas import faas_command
    from otrace.bench._cli_ingest import ingest_command
    from otrace.bench._cli_query import query_command

    bench.add_command(ingest_command)
    bench.add_command(election_command)
    bench.add_command(faas_command)
    bench.add_command(query_command)


_register()


@bench.command("oram", help=_ORAM_HELP)
@click.option("--blocks", default=1 << 16, show_default=True, help="N: blocks in the ORAM.")
@click.option(
    "--block-size", default=DEFAULT_BLOCK_SIZE, show_default=True, help="B: bytes per block."
)
@click.option("--accesses", default=2000, show_default=True, help="A: accesses per variant.")
@click.option("--batch", default=64, show_default=True, help="K: distinct blocks per batch.")
@click.option("--cache-levels", default=6, show_default=True, help="C: top tree levels cached.")
@click.option("--group", default=8, show_default=True, help="G: batches a commit, grouped variant.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the figures as flat JSON to this file.",
)
@click.option(
    "--dir",
    "work_dir",
    type=click.Path(file_okay=False, exists=True, writable=True, path_type=Path),
    help="Where the temporary databases go (default: the system temp dir). They are "
    "deleted afterwards either way.",
)
@click.option("--skip-pyoram", is_flag=True, help="Do not measure PyORAM (its ratios show n/a).")
def oram_command(
    blocks: int,
    block_size: int,
    accesses: int,
    batch: int,
    cache_levels: int,
    group: int,
    json_path: Path | None,
    work_dir: Path | None,
    skip_pyoram: bool,
) -> None:
    config = OramBenchConfig(
        blocks=blocks,
        block_size=block_size,
        accesses=accesses,
        batch=batch,
        cache_levels=cache_levels,
        group=group,
        skip_pyoram=skip_pyoram,
    )
    config.params("bench")  # reject a bad geometry before any work starts
    console = Console()
    with tempfile.TemporaryDirectory(prefix="otrace-bench-", dir=work_dir) as tmp:
        with _progress_bar(console) as progress:
            report = run_oram_bench(config, Path(tmp), progress)
    console.print(_oram_table(report))
    console.print(_oram_summary(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"JSON written to {json_path}")


@contextmanager
def _progress_bar(console: Console) -> Iterator[_PhaseProgress]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield _PhaseProgress(progress)


class _PhaseProgress:
    """Adapts the library's `progress(phase, done, total)` calls to one rich task per phase."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(phase, total=total)
        self._progress.update(task, completed=done, total=total)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _oram_table(report: OramBenchReport) -> Table:
    c = report.config
    table = Table(
        title=(
            f"Path ORAM, N={c.blocks} (height {report.height}), B={c.block_size}, "
            f"C={c.cache_levels}, A={c.accesses}, K={c.batch}"
        )
    )
    for header in ("variant", "ops/s", "ms/op", "x PyORAM", "x floor"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for variant in report.variants:
        table.add_row(
            variant.name,
            f"{variant.ops_per_s:,.1f}",
            f"{variant.ms_per_op:.3f}",
            _ratio(report.speedup_vs_pyoram(variant)),
            _ratio(report.time_vs_floor(variant)),
        )
    return table


def _oram_summary(report: OramBenchReport) -> str:
    lines = [
        f"init (single tree): {report.single.init_s:.2f} s, "
        f"peak RSS during init {report.single.init_peak_rss_mib:.1f} MiB, "
        f"database {report.single.db_mib:,.0f} MiB",
        f"init (batched tree): {report.batched.init_s:.2f} s; "
        f"floor table load: {report.floor.load_s:.2f} s",
        f"peak RSS: {report.peak_rss_mib:.1f} MiB whole run, "
        f"{report.otrace_peak_rss_mib:.1f} MiB through the otrace variants",
        f"stash peak: {report.single.stash_peak} (single), {report.batched.stash_peak} (batched)",
    ]
    if report.pyoram is not None:
        lines.append(
            f"PyORAM setup: {report.pyoram.setup_s:.2f} s (tree height {report.pyoram.height})"
        )
    return "\n".join(lines)
