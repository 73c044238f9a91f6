"""`otrace bench faas`: the FaaS chain benchmark's command (table, progress, JSON)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from otrace.bench._options import json_option, write_json

__all__ = ["faas_command"]


@click.command("faas")
@click.option("--invocations", default=1000, show_default=True, help="N: invocations per mode.")
@click.option("--arg-bytes", default=4096, show_default=True, help="Argument size in bytes.")
@click.option(
    "--transport",
    type=click.Choice(["grpc", "local"]),
    default="grpc",
    show_default=True,
    help="grpc: each role a loopback gRPC server; local: in-memory calls.",
)
@click.option("--cold-starts", default=5, show_default=True, help="Fresh deployments timed.")
@json_option
def faas_command(
    invocations: int, arg_bytes: int, transport: str, cold_starts: int, json_path: Path | None
) -> None:
    """Protected FaaS chain vs the same runtime unprotected (3 functions, 4 KiB arguments).

    \b
    Gateway -> controller -> decode -> transform -> store -> gateway, built
    twice in this process on one platform and KMS: protected (manifest checks,
    per-hop AES-GCM, replay set, KMS keys) and unprotected (protect=False,
    same code path otherwise). Invocations alternate between the two.
      p50/p99 ms    per-invocation latency seen by the gateway's caller
      overhead      protected / unprotected - 1 (warm)
      cold start    first invocation of a fresh protected deployment:
                    4 attestations to the KMS + hop-key fetches
    Function bodies are small (zlib and hashing over 4 KiB), so the ratio is
    close to an upper bound; the added ms per invocation is the fixed cost.
    """
    from otrace.bench.faas import FaasBenchConfig, run_faas_bench

    config = FaasBenchConfig(
        invocations=invocations, arg_bytes=arg_bytes, transport=transport, cold_starts=cold_starts
    )
    console = Console()
    with tempfile.TemporaryDirectory(prefix="otrace-bench-faas-") as tmp:
        with console.status("running") as status:

            def progress(phase: str, done: int, total: int) -> None:
                status.update(f"{phase}: {done}/{total}")

            report = run_faas_bench(config, Path(tmp), progress)
    table = Table(title=f"FaaS chain, 3 functions, {arg_bytes} B arguments, {transport}")
    for header in ("mode", "p50 ms", "p99 ms", "mean ms"):
        table.add_column(header, justify="left" if header == "mode" else "right")
    for name, latency in (
        ("unprotected", report.unprotected),
        ("protected (warm)", report.protected),
        ("protected (cold start)", report.cold_start),
    ):
        table.add_row(name, f"{latency.p50:.3f}", f"{latency.p99:.3f}", f"{latency.mean:.3f}")
    console.print(table)
    figures = report.to_json()
    console.print(
        f"warm overhead: p50 {report.overhead_p50:+.1%}, p99 {report.overhead_p99:+.1%} "
        f"({figures['added_p50_ms']:+.3f} ms per invocation at p50); "
        f"cold start / warm p50: {report.cold_start.p50 / report.protected.p50:.1f}x"
    )
    write_json(console, json_path, figures)
