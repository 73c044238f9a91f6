"""`otrace search`, `trace`, `services`, `operations` against a real node."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from otrace.cli import cli
from otrace.cli_query import parse_time
from otrace.errors import ConfigError
from tests.query.conftest import Loaded


def _run(loaded: Loaded, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [*args, "--endpoint", loaded.endpoint, "--key-file", str(loaded.node.credential_path)],
        catch_exceptions=False,
        env={"COLUMNS": "200"},
    )
    return result.exit_code, result.output


def test_search_json_lists_matching_traces_with_their_summary(loaded: Loaded) -> None:
    code, out = _run(
        loaded,
        "search",
        "--service",
        "checkout",
        "--attr",
        "http.status_code=500",
        "--min-duration",
        "500ms",
        "--since",
        "1h",
        "--json",
    )
    assert code == 0
    (row,) = json.loads(out)
    assert row["trace_id"] == loaded.slow_trace.hex()
    assert (row["root_service"], row["root_name"], row["span_count"]) == (
        "checkout",
        "GET /cart",
        3,
    )
    assert row["error"] is True and row["duration_ms"] == 900.0
    assert row["start"].endswith("Z") and "T" in row["start"]


def test_search_table_and_trace_waterfall(loaded: Loaded) -> None:
    code, out = _run(loaded, "search", "--service", "checkout", "--limit", "5")
    assert code == 0
    assert "5 trace(s)" in out and "GET /cart" in out
    code, out = _run(loaded, "trace", loaded.slow_trace.hex(), "--attributes")
    assert code == 0
    lines = out.splitlines()
    root = next(i for i, line in enumerate(lines) if "GET /cart" in line)
    child = next(i for i, line in enumerate(lines) if "SELECT cart" in line)
    assert child > root and "█" in lines[root]
    assert "http.status_code=500" in out and "900.0ms" in out


def test_trace_json_is_otlp_json_with_hex_ids(loaded: Loaded) -> None:
    code, out = _run(loaded, "trace", loaded.slow_trace.hex(), "--json")
    assert code == 0
    spans = [
        s for rs in json.loads(out)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
    ]
    assert {s["traceId"] for s in spans} == {loaded.slow_trace.hex()}
    assert all(len(s["spanId"]) == 16 for s in spans)
    assert {s.get("kind") for s in spans} == {2, 3}  # integer enums, as OTLP/JSON wants


def test_services_and_operations_commands(loaded: Loaded) -> None:
    assert json.loads(_run(loaded, "services", "--json")[1]) == ["cart", "checkout", "payments"]
    code, out = _run(loaded, "operations", "payments")
    assert code == 0 and "SELECT cart" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--min-duration", "fast"], "bad duration 'fast'"),
        (["search", "--start", "yesterday-ish"], "bad time 'yesterday-ish'"),
        (["search", "--attr", "novalue"], "bad --attr 'novalue'"),
        (["search", "--since", "1h", "--start", "2026-01-01"], "either --since or --start"),
        (["trace", "abc"], "a trace id is 32 hex digits"),
        (["trace", "ab" * 16], "was not found"),
    ],
)
def test_bad_input_gets_a_message_that_says_what_to_do(
    loaded: Loaded, args: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _run(loaded, *args)


def test_times_parse_as_rfc3339_dates_or_unix_seconds() -> None:
    assert parse_time("1700000000") == 1_700_000_000 * 10**9
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000 * 10**9
    assert parse_time("2023-11-14") == 1_699_920_000 * 10**9
