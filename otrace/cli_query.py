"""`otrace search`, `otrace trace`, `otrace services`, `otrace operations`: the analyst's CLI.

Each command loads the analyst credential, opens one attested session with
the node's query API (`query.QueryClient`), sends trapdoors and renders the
answer: a table, a waterfall, or JSON for machines.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status, TracesData
from rich.console import Console
from rich.table import Table
from rich.text import Text

from otrace.errors import ConfigError
from otrace.settings import parse_duration

__all__ = ["operations", "resolve_key_file", "search", "services", "trace"]

DEFAULT_ENDPOINT = "127.0.0.1:16685"
_BAR = 40


def resolve_key_file(given: Path | None) -> Path:
    """--key-file, else $OTRACE_KEY_FILE, else analyst.cred in $OTRACE_DATA_DIR or otrace-data."""
    if given is not None:
        return given
    if os.environ.get("OTRACE_KEY_FILE"):
        return Path(os.path.expanduser(os.environ["OTRACE_KEY_FILE"]))
    data_dir = os.environ.get("OTRACE_DATA_DIR", "otrace-data")
    return Path(os.path.expanduser(data_dir)) / "analyst.cred"


def _connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--endpoint",
        help=f"Query API address of the node. [the credential's, else {DEFAULT_ENDPOINT}]",
    )
    @click.option(
        "--key-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Analyst credential. [$OTRACE_KEY_FILE, else otrace-data/analyst.cred]",
    )
    @click.option(
        "--measurement",
        "measurements",
        multiple=True,
        help="Accept this enclave measurement (hex) instead of the credential's; repeatable.",
    )
    @functools.wraps(command)
    def wrapped(
        endpoint: str | None, key_file: Path | None, measurements: tuple[str, ...], **kw: Any
    ) -> Any:
        from query import QueryClient

        try:
            allowed = [bytes.fromhex(m) for m in measurements]
        except ValueError:
            raise click.BadParameter("a measurement is hex", param_hint="--measurement") from None
        with QueryClient.connect(
            endpoint, key_file=resolve_key_file(key_file), measurements=allowed
        ) as client:
            return command(client, **kw)

    return wrapped


# ------------------------------------------------------------------ parsing


def parse_time(text: str) -> int:
    """RFC 3339 (`2026-11-22T10:00:00Z`), a date, or Unix seconds -> ns since the epoch."""
    raw = text.strip()
    try:
        return round(float(raw) * 10**9)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"bad time {text!r}: use RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) "
            "or Unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 10**9)


def _duration_ns(text: str | None) -> int | None:
    return None if text is None else round(parse_duration(text) * 10**9)


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"bad --attr {text!r}: use KEY=VALUE, e.g. http.status_code=500")
    return key, value


def _trace_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise ConfigError(f"bad trace id {text!r}: a trace id is 32 hex digits")
    return raw


# ----------------------------------------------------------------- summaries


@dataclass(frozen=True, slots=True)
class _Flat:
    service: str
    span: Span
    attributes: dict[str, str]


def _flatten(data: TracesData) -> list[_Flat]:
    out = []
    for rs in data.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        service = resource.get("service.name", "unknown_service")
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = {**resource, **{kv.key: _value(kv.value) for kv in span.attributes}}
                out.append(_Flat(service, span, attrs))
    return out


def _value(value: Any) -> str:
    which = value.WhichOneof("value")
    return "" if which is None else str(getattr(value, which))


def _root(spans: list[_Flat]) -> _Flat:
    ids = {f.span.span_id for f in spans}
    orphans = [f for f in spans if not f.span.parent_span_id or f.span.parent_span_id not in ids]
    return min(orphans or spans, key=lambda f: f.span.start_time_unix_nano)


def summaries(data: TracesData) -> list[dict[str, Any]]:
    """One summary per trace, most recent first (the `search --json` objects)."""
    traces: dict[bytes, list[_Flat]] = {}
    for flat in _flatten(data):
        traces.setdefault(flat.span.trace_id, []).append(flat)
    out: list[dict[str, Any]] = []
    for trace_id, spans in traces.items():
        root = _root(spans)
        start = min(f.span.start_time_unix_nano for f in spans)
        end = max(f.span.end_time_unix_nano for f in spans)
        out.append(
            {
                "trace_id": trace_id.hex(),
                "root_service": root.service,
                "root_name": root.span.name,
                "start": _rfc3339(start),
                "duration_ms": round((end - start) / 1e6, 3),
                "span_count": len(spans),
                "error": any(f.span.status.code == Status.STATUS_CODE_ERROR for f in spans),
                "_start_ns": start,
            }
        )
    out.sort(key=lambda s: s["_start_ns"], reverse=True)
    for item in out:
        del item["_start_ns"]
    return out


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 10**9)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


def otlp_json(data: TracesData) -> dict[str, Any]:
    """OTLP/JSON: camelCase fields, integer enums, hex trace and span ids."""
    doc = json_format.MessageToDict(data, use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = base64.b64decode(span[name]).hex()
                for link in span.get("links", []):
                    for name in ("traceId", "spanId"):
                        if name in link:
                            link[name] = base64.b64decode(link[name]).hex()
    return doc


# ----------------------------------------------------------------- commands


@click.command()
@click.option("--service", help="Service name (resource attribute service.name).")
@click.option("--name", help="Span name (operation).")
@click.option(
    "--attr", "attrs", multiple=True, help="KEY=VALUE on the span or its resource; repeatable."
)
@click.option("--min-duration", help="Shortest matching span, e.g. 100ms.")
@click.option("--max-duration", help="Longest matching span, e.g. 2s.")
@click.option("--since", help="Look back this far, e.g. 15m, 1h, 2d. [1h]")
@click.option("--start", help="Range start: RFC 3339, a date or Unix seconds (with --end).")
@click.option("--end", help="Range end: RFC 3339, a date or Unix seconds. [now]")
@click.option("--limit", type=int, default=20, show_default=True, help="Most traces to return.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@_connection_options
def search(
    client: Any,
    service: str | None,
    name: str | None,
    attrs: tuple[str, ...],
    min_duration: str | None,
    max_duration: str | None,
    since: str | None,
    start: str | None,
    end: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Find traces with a span matching every predicate, most recent first.

    \b
    otrace search --service checkout --attr http.status_code=500 --since 2h
    otrace search --name "GET /cart" --min-duration 250ms --json

    Predicates travel as trapdoors computed with your credential's index key;
    the node answers with a fixed number of ORAM reads whatever matches, and
    says when more traces may match than that budget could read.
    """
    if since and start:
        raise ConfigError("give either --since or --start/--end, not both")
    end_ns = parse_time(end) if end else time.time_ns()
    start_ns = parse_time(start) if start else end_ns - round(parse_duration(since or "1h") * 1e9)
    answer = client.search(
        service=service,
        name=name,
        attributes=[_attribute(a) for a in attrs],
        min_duration_ns=_duration_ns(min_duration),
        max_duration_ns=_duration_ns(max_duration),
        start_ns=start_ns,
        end_ns=end_ns,
        limit=limit,
    )
    rows = summaries(answer.data)
    console = Console()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"{len(rows)} trace(s)")
        for column in ("trace id", "root service", "operation", "start", "duration", "spans"):
            table.add_column(column, justify="right" if column in ("duration", "spans") else "left")
        table.add_column("error")
        for r in rows:
            table.add_row(
                r["trace_id"],
                r["root_service"],
                r["root_name"],
                r["start"],
                _ms(r["duration_ms"]),
                str(r["span_count"]),
                Text("error", style="bold red") if r["error"] else "",
            )
        console.print(table)
    if answer.truncated:
        Console(stderr=True).print(
            "[yellow]truncated:[/] more traces may match than this search's read budget "
            "covers; narrow the time range or the predicates"
        )


@click.command()
@click.argument("trace_id")
@click.option("--lookback", help="Only look this far back, e.g. 1d. [the whole retention]")
@click.option("--attributes", is_flag=True, help="Show every span's attributes.")
@click.option("--json", "as_json", is_flag=True, help="Print the trace as OTLP/JSON.")
@_connection_options
def trace(
    client: Any, trace_id: str, lookback: str | None, attributes: bool, as_json: bool
) -> None:
    """Show one trace as a waterfall (or OTLP/JSON with --json).

    \b
    otrace trace 5b8efff798038103d269b633813fc60c
    otrace trace 5b8efff798038103d269b633813fc60c --attributes
    """
    answer = client.fetch_trace(_trace_id(trace_id), lookback_ns=_duration_ns(lookback))
    if as_json:
        click.echo(json.dumps(otlp_json(answer.data), indent=2))
        return
    spans = _flatten(answer.data)
    if not spans:
        raise ConfigError(f"trace {trace_id} was not found (or is older than the retention)")
    Console().print(waterfall(spans, attributes))
    if answer.truncated:
        Console(stderr=True).print(
            "[yellow]truncated:[/] the trace has more blocks than the budget"
        )


def waterfall(spans: list[_Flat], with_attributes: bool = False) -> Table:
    """An indented span tree with offsets and duration bars."""
    start = min(f.span.start_time_unix_nano for f in spans)
    total = max(1, max(f.span.end_time_unix_nano for f in spans) - start)
    children: dict[bytes, list[_Flat]] = {}
    ids = {f.span.span_id for f in spans}
    for f in spans:
        parent = f.span.parent_span_id if f.span.parent_span_id in ids else b""
        children.setdefault(parent, []).append(f)
    table = Table(
        title=f"trace {spans[0].span.trace_id.hex()}: {len(spans)} spans, {_ms(total / 1e6)}"
    )
    for column in ("span", "service", "offset", "duration", "timeline"):
        table.add_column(column, justify="right" if column in ("offset", "duration") else "left")

    def visit(parent: bytes, depth: int) -> None:
        for f in sorted(children.get(parent, []), key=lambda x: x.span.start_time_unix_nano):
            s = f.span
            offset, length = (
                s.start_time_unix_nano - start,
                s.end_time_unix_nano - s.start_time_unix_nano,
            )
            lead = round(offset / total * _BAR)
            bar = " " * lead + "█" * max(1, round(length / total * _BAR))
            error = s.status.code == Status.STATUS_CODE_ERROR
            label = Text("  " * depth + s.name, style="bold red" if error else "")
            if with_attributes:
                label.append("\n" + _attribute_lines(f.attributes, depth), style="dim")
            table.add_row(
                label,
                f.service,
                _ms(offset / 1e6),
                _ms(length / 1e6),
                Text(bar, style="red" if error else "cyan"),
            )
            visit(s.span_id, depth + 1)

    visit(b"", 0)
    return table


def _attribute_lines(attributes: dict[str, str], depth: int) -> str:
    return "\n".join(f"{'  ' * (depth + 1)}{k}={v}" for k, v in sorted(attributes.items()))


def _ms(ms: float) -> str:
    return f"{ms / 1000:.2f}s" if ms >= 1000 else f"{ms:.1f}ms"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@_connection_options
def services(client: Any, as_json: bool) -> None:
    """List the services that have sent spans."""
    _print_names(client.services(), "service", as_json)


@click.command()
@click.argument("service")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@_connection_options
def operations(client: Any, service: str, as_json: bool) -> None:
    """List the span names (operations) SERVICE has sent."""
    _print_names(client.operations(service), "operation", as_json)


def _print_names(names: Iterable[str], what: str, as_json: bool) -> None:
    items = list(names)
    if as_json:
        click.echo(json.dumps(items))
        return
    table = Table(title=f"{len(items)} {what}(s)")
    table.add_column(what)
    for item in items:
        table.add_row(item)
    Console().print(table)
