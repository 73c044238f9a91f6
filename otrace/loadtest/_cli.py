"""`otrace loadtest` and `otrace loadtest sink`: flags in, one library call, rich out."""

from __future__ import annotations

import importlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from otrace.cli_query import resolve_key_file
from otrace.errors import ConfigError
from otrace.loadtest._config import LoadConfig
from otrace.loadtest._retry import RetryPolicy
from otrace.loadtest._run import LiveStats, LoadReport, run_load
from otrace.loadtest._sink import OtlpSink
from otrace.loadtest._traces import TraceShape
from otrace.loadtest._transport import Endpoint
from otrace.loadtest._verify import VerifyReport, verify_traces
from otrace.settings import parse_duration

__all__ = ["loadtest"]

_HELP = """Drive an OTLP endpoint with realistic traces; optionally read a sample back.

\b
  otrace loadtest --endpoint 127.0.0.1:4317 --rate 20000 --duration 60s
  otrace loadtest --endpoint 127.0.0.1:4318 --protocol http --gzip --max --duration 30s
  otrace loadtest --endpoint 127.0.0.1:4317 --duration 30s --verify
  otrace loadtest sink                  # a no-op endpoint that counts what it gets

\b
Worker processes build their requests before the clock starts (trees of
spans across --services services, --depth levels, --attrs attributes each,
--error-rate of them failing), then send them as raw bytes at --rate spans/s
(or --max: as fast as the endpoint answers) for --duration, with --threads
concurrent Exports each. Retryable answers are retried as the OpenTelemetry
exporters do (UNAVAILABLE, RESOURCE_EXHAUSTED with RetryInfo, ...; HTTP 429,
502, 503, 504), waiting at least the server's RetryInfo / Retry-After, at
most --retries times and --retry-budget of waiting per request.

\b
Report (table, and --json with these keys):
  sent_spans      spans whose Export was attempted
  acked_spans     spans the endpoint accepted (answered OK, minus rejected)
  rejected_spans  spans an OK answer declared dropped (partial_success)
  errors          failed spans by the last status code (UNAVAILABLE,
                  HTTP 503, CONNECTION_ERROR, ...); sent = acked +
                  rejected + failed
  spans_per_s     acked_spans / seconds from start to the last answer
  p50/p95/p99_ms  latency of acknowledged Export calls (last attempt)
  retries         retried attempts by status code
  verified_traces sampled traces whose every acknowledged span came back
                  byte-identical (--verify; null without it)
  lost_spans      acknowledged spans missing from the read-back (--verify)
  corrupt_spans   acknowledged spans that came back altered (--verify)

\b
--verify reads --sample acknowledged traces (the same ones whatever the
timing: the smallest trace-id hashes; 'all' keeps every trace, memory
permitting) back through the query API at --query-endpoint, waiting up to
--verify-wait for spans still in an ingest epoch. The exit status is 1 if
any acknowledged span is lost or corrupt. Live progress is drawn only when
stdout is a terminal.
"""


@click.group("loadtest", invoke_without_command=True, help=_HELP)
@click.option("--endpoint", metavar="HOST:PORT", help="The OTLP endpoint to load (required).")
@click.option(
    "--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True,
    help="OTLP/gRPC or OTLP/HTTP (protobuf, POST /v1/traces).",
)  # fmt: skip
@click.option("--gzip", "use_gzip", is_flag=True, help="Compress requests with gzip.")
@click.option("--rate", type=float, default=10_000, show_default=True, help="Spans/s, all workers.")
@click.option("--max", "max_rate", is_flag=True, help="No pacing: as fast as answered.")
@click.option("--duration", default="60s", show_default=True, help="How long to send.")
@click.option("--workers", type=int, default=2, show_default=True, help="Sender processes.")
@click.option("--threads", type=int, default=4, show_default=True, help="Exports in flight/worker.")
@click.option("--services", type=int, default=8, show_default=True, help="Services per trace.")
@click.option("--depth", type=int, default=4, show_default=True, help="Levels in a span tree.")
@click.option("--attrs", type=int, default=10, show_default=True, help="Attributes per span.")
@click.option("--error-rate", type=float, default=0.02, show_default=True, help="Spans in error.")
@click.option("--spans-per-request", type=int, default=500, show_default=True)
@click.option("--header", multiple=True, metavar="KEY=VALUE", help="Extra header; repeatable.")
@click.option(
    "--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA: connect with TLS, trusting this CA.",
)  # fmt: skip
@click.option("--timeout", default="10s", show_default=True, help="Per Export attempt.")
@click.option("--retries", type=int, default=5, show_default=True, help="Retries per request.")
@click.option("--retry-budget", default="60s", show_default=True, help="Waiting per request.")
@click.option("--verify", is_flag=True, help="Read a sample back through the query API.")
@click.option("--sample", default="200", show_default=True, help="Traces to verify, or 'all'.")
@click.option("--verify-wait", default="10s", show_default=True, help="Wait for late spans.")
@click.option(
    "--query-endpoint",
    help="Query API of the node (--verify). [the credential's, else 127.0.0.1:16685]",
)
@click.option(
    "--key-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Analyst credential for --verify. [$OTRACE_KEY_FILE, else otrace-data/analyst.cred]",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON to this file.",
)  # fmt: skip
@click.option("--sdk", is_flag=True, help="Send through the OpenTelemetry SDK exporters.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the generator.")
@click.pass_context
def loadtest(ctx: click.Context, /, **opts: Any) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if not opts["endpoint"]:
        raise click.UsageError("--endpoint HOST:PORT is required (or run `loadtest sink`)")
    rate_given = ctx.get_parameter_source("rate") is click.core.ParameterSource.COMMANDLINE
    if opts["max_rate"] and rate_given:
        raise click.UsageError("--rate and --max exclude each other")
    config = _config(opts)
    console = Console()
    with ExitStack() as stack:
        # With --verify, attest and log in before sending anything: a wrong credential
        # or an unreachable query API fails fast instead of after the whole run.
        client = None
        if opts["verify"]:
            client = stack.enter_context(
                _query_client_class().connect(
                    opts["query_endpoint"], key_file=resolve_key_file(opts["key_file"])
                )
            )
        report = _run(config, console)
        verified = None if client is None else _verify(client, report, opts, console)
    console.print(_report_table(report, verified))
    result = report.to_json()
    if verified is not None:
        result.update(
            verified_traces=verified.verified_traces,
            lost_spans=verified.lost_spans,
            corrupt_spans=verified.corrupt_spans,
        )
        for line in verified.problems():
            console.print(f"[red]{line}[/red]")
    if opts["json_path"] is not None:
        opts["json_path"].write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"JSON written to {opts['json_path']}")
    if verified is not None and not verified.ok:
        # An exception, not ctx.exit: `otrace.cli.main` runs click non-standalone
        # and would drop an exit code, but renders ClickException with status 1.
        raise click.ClickException(
            f"{verified.lost_spans:,} acknowledged spans lost, {verified.corrupt_spans:,} "
            f"corrupt, in {len(verified.checks) - verified.verified_traces:,} traces"
        )


def _config(opts: dict[str, Any]) -> LoadConfig:
    headers = []
    for item in opts["header"]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--header must be KEY=VALUE, not {item!r}")
        headers.append((key.strip(), value.strip()))
    sample = opts["sample"].strip().lower()
    if sample != "all" and not sample.isdigit():
        raise ConfigError(f"--sample must be a count or 'all', not {opts['sample']!r}")
    endpoint = Endpoint(
        opts["endpoint"],
        headers=tuple(headers),
        gzip=opts["use_gzip"],
        tls_ca=opts["tls_ca"].read_bytes() if opts["tls_ca"] else None,
        timeout_s=parse_duration(opts["timeout"]),
    )
    return LoadConfig(
        endpoint,
        protocol=opts["protocol"],
        rate=None if opts["max_rate"] else opts["rate"],
        duration_s=parse_duration(opts["duration"]),
        workers=opts["workers"],
        threads=opts["threads"],
        shape=TraceShape(opts["services"], opts["depth"], opts["attrs"], opts["error_rate"]),
        spans_per_request=opts["spans_per_request"],
        sample=None if sample == "all" else int(sample),
        retry=RetryPolicy(
            max_attempts=opts["retries"] + 1, budget_s=parse_duration(opts["retry_budget"])
        ),
        sdk=opts["sdk"],
        seed=opts["seed"],
    )


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C (or SIGTERM) ends the run early but still reports what was sent."""
    stop = threading.Event()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(config: LoadConfig, console: Console) -> LoadReport:
    mode = "SDK exporters" if config.sdk else "prebuilt requests"
    rate = "max" if config.rate is None else f"{config.rate:,.0f} spans/s"
    console.print(
        f"loading {config.endpoint.target} over {config.protocol}"
        f"{' (gzip)' if config.endpoint.gzip else ''}: {rate} for {config.duration_s:g} s, "
        f"{config.workers} workers, {mode}"
    )
    with _interruptible() as stop:
        if not sys.stdout.isatty():
            return run_load(config, stop=stop)
        with Live(_live_table(None), console=console, refresh_per_second=4) as live:
            return run_load(config, progress=lambda s: live.update(_live_table(s)), stop=stop)


def _live_table(stats: LiveStats | None) -> Table:
    table = Table(show_header=True, box=None)
    for header in ("elapsed", "spans/s", "sent", "acked", "failed", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(header, justify="right")
    if stats is None:
        table.add_row("building requests...", *[""] * 7)
        return table
    t = stats.tally
    table.add_row(
        f"{stats.elapsed_s:.0f}/{stats.duration_s:g} s",
        f"{stats.spans_per_s:,.0f}",
        f"{t.sent_spans:,}",
        f"{t.acked_spans:,}",
        f"{t.failed_spans:,}",
        f"{stats.percentile_ms(50):.1f}",
        f"{stats.percentile_ms(95):.1f}",
        f"{stats.percentile_ms(99):.1f}",
    )
    if t.failed or t.retries:
        errors = ", ".join(f"{k} {v:,}" for k, v in sorted(t.failed.items()))
        retries = ", ".join(f"{k} {v:,}" for k, v in sorted(t.retries.items()))
        table.caption = f"failed spans: {errors or '-'}; retries: {retries or '-'}"
    return table


def _query_client_class() -> Any:
    # Looked up when needed: sending load does not load the query client (and tests
    # stand their own in for it).
    return importlib.import_module("query").QueryClient


def _verify(
    client: Any, report: LoadReport, opts: dict[str, Any], console: Console
) -> VerifyReport:
    wait_s = parse_duration(opts["verify_wait"])
    with console.status(f"verifying {len(report.sample)} acknowledged traces") as status:

        def progress(done: int, total: int) -> None:
            status.update(f"verifying: {done} of {total} traces whole")

        return verify_traces(client, report.sample, wait_s=wait_s, progress=progress)


def _report_table(report: LoadReport, verified: VerifyReport | None) -> Table:
    t = report.tally
    table = Table(title="otrace loadtest", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("sent spans", f"{t.sent_spans:,} in {t.requests:,} requests"),
        ("acknowledged spans", f"{t.acked_spans:,}"),
        ("rejected spans (partial success)", f"{t.rejected_spans:,}"),
        ("failed spans", f"{t.failed_spans:,}"),
        ("acknowledged spans/s", f"{report.spans_per_s:,.0f} over {report.duration_s:.1f} s"),
        (
            "Export latency p50 / p95 / p99",
            f"{report.percentile_ms(50):.1f} / {report.percentile_ms(95):.1f} / "
            f"{report.percentile_ms(99):.1f} ms",
        ),
    ]
    rows += [(f"  failed: {code}", f"{n:,} spans") for code, n in sorted(t.failed.items())]
    rows += [(f"  retried: {code}", f"{n:,} attempts") for code, n in sorted(t.retries.items())]
    if verified is not None:
        rows += [
            ("verified traces", f"{verified.verified_traces:,} of {len(verified.checks):,}"),
            ("lost spans", f"{verified.lost_spans:,}"),
            ("corrupt spans", f"{verified.corrupt_spans:,}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table


@loadtest.command("sink")
@click.option("--grpc", "grpc_address", default="127.0.0.1:4317", show_default=True,
              help="OTLP/gRPC listen address ('' disables; port 0 picks one).")  # fmt: skip
@click.option("--http", "http_address", default="127.0.0.1:4318", show_default=True,
              help="OTLP/HTTP listen address ('' disables; port 0 picks one).")  # fmt: skip
@click.option("--duration", help="Stop after this long. [until Ctrl-C or SIGTERM]")
@click.option("--every", default="5s", show_default=True,
              help="How often to print counts when stdout is not a terminal.")  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
    help="On exit, write the counts as JSON to this file.",
)  # fmt: skip
def sink_command(
    grpc_address: str, http_address: str, duration: str | None, every: str, json_path: Path | None
) -> None:
    """A no-op OTLP endpoint that counts requests and spans, and stores nothing.

    \b
    The far end for measuring the harness itself: anything `otrace loadtest`
    cannot push into the sink, it cannot push into a node either. It prints
    the addresses it listens on (first lines of output, so a script can start
    it on port 0), then the counts: live on a terminal, otherwise a line every
    --every. On exit (Ctrl-C, SIGTERM or --duration) it prints the totals and
    writes them with --json (requests, spans, refused, malformed,
    received_bytes, duration_s, spans_per_s).
    """
    limit = parse_duration(duration) if duration else None
    period = parse_duration(every)
    sink = OtlpSink(grpc_address, http_address)
    sink.start()
    if sink.grpc_address:
        click.echo(f"OTLP/gRPC sink on {sink.grpc_address}")
    if sink.http_address:
        click.echo(f"OTLP/HTTP sink on {sink.http_address}")
    sys.stdout.flush()
    started = time.monotonic()
    try:
        with _interruptible() as stop:
            _watch_sink(sink, stop, started, limit, period)
    finally:
        sink.stop()
    elapsed = time.monotonic() - started
    c = sink.counts()
    result = {
        "requests": c.requests,
        "spans": c.spans,
        "refused": c.refused,
        "malformed": c.malformed,
        "received_bytes": c.received_bytes,
        "duration_s": round(elapsed, 3),
        "spans_per_s": round(c.spans / elapsed, 1) if elapsed > 0 else 0.0,
    }
    click.echo(
        f"received {c.requests:,} requests, {c.spans:,} spans "
        f"({c.malformed:,} malformed) in {elapsed:.1f} s"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")


def _watch_sink(
    sink: OtlpSink, stop: threading.Event, started: float, limit: float | None, period: float
) -> None:
    def line() -> str:
        c = sink.counts()
        return f"{time.monotonic() - started:6.0f} s  {c.requests:,} requests  {c.spans:,} spans"

    def over() -> bool:
        return limit is not None and time.monotonic() - started >= limit

    if sys.stdout.isatty():
        with Live(line(), refresh_per_second=2) as live:
            while not stop.wait(0.5) and not over():
                live.update(line())
        return
    while True:
        left = period if limit is None else limit - (time.monotonic() - started)
        if stop.wait(max(0.0, min(period, left))) or over():
            return
        click.echo(line())
        sys.stdout.flush()
