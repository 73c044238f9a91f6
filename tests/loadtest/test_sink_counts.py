"""A short load against the counting sink: every count adds up, over gRPC and HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from otrace.cli import cli
from otrace.errors import ConfigError
from otrace.loadtest import OtlpSink, run_load
from tests.loadtest.conftest import short_load


@pytest.mark.parametrize(("protocol", "gzip"), [("grpc", False), ("http", False), ("http", True)])
def test_counts_add_up_against_the_sink(sink: OtlpSink, protocol: str, gzip: bool) -> None:
    target = sink.grpc_address if protocol == "grpc" else sink.http_address
    report = run_load(short_load(target, protocol=protocol, gzip=gzip))
    t = report.tally
    counted = sink.counts()
    assert t.sent_spans >= 1_500  # 2,000 spans/s for 1 s, give or take a request
    assert t.sent_spans == t.acked_spans == counted.spans
    assert t.requests == counted.requests
    assert t.failed == {} and t.rejected_spans == 0 and counted.malformed == 0
    assert report.spans_per_s > 0 and report.percentile_ms(99) > 0
    # The ledger keeps the 200 acknowledged traces with the smallest trace-id hashes.
    keys = [trace.key for trace in report.sample]
    assert len(keys) == 200 and keys == sorted(keys)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_mode_counts_add_up(sink: OtlpSink, protocol: str) -> None:
    target = sink.grpc_address if protocol == "grpc" else sink.http_address
    config = short_load(target, protocol=protocol, sdk=True, rate=1_000.0, sample=50)
    report = run_load(config)
    t = report.tally
    assert t.failed == {} and t.sent_spans >= 800
    assert t.sent_spans == t.acked_spans == sink.counts().spans
    assert len(report.sample) == 50


def test_cli_against_the_sink_command(tmp_path: Path) -> None:
    """`otrace loadtest sink` on port 0 in its own process; `otrace loadtest --json` at it."""
    sink_json = tmp_path / "sink.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "otrace", "loadtest", "sink", "--grpc", "127.0.0.1:0",
         "--http", "", "--duration", "20s", "--json", str(sink_json)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("OTLP/gRPC sink on "), first
        target = first.split()[-1]
        out = tmp_path / "load.json"
        args = ["loadtest", "--endpoint", target, "--rate", "3000", "--duration", "1s",
                "--workers", "1", "--spans-per-request", "100", "--sample", "50",
                "--json", str(out)]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "acknowledged spans" in result.output
    finally:
        proc.terminate()  # SIGTERM: the sink stops, prints totals, writes its JSON
        proc.communicate(timeout=20)
    report = json.loads(out.read_text())
    for key in ("sent_spans", "acked_spans", "spans_per_s", "p50_ms", "p95_ms", "p99_ms",
                "errors", "verified_traces", "lost_spans"):  # fmt: skip
        assert key in report, key
    assert report["sent_spans"] == report["acked_spans"] > 0
    assert report["errors"] == {} and report["sampled_traces"] == 50
    assert report["verified_traces"] is None  # no --verify
    counted = json.loads(sink_json.read_text())
    assert counted["spans"] == report["acked_spans"]
    assert counted["requests"] == report["requests"]


def test_verify_without_a_credential_is_a_clear_config_error(
    sink: OtlpSink, tmp_path: Path
) -> None:
    args = ["loadtest", "--endpoint", sink.grpc_address, "--duration", "1s", "--verify",
            "--key-file", str(tmp_path / "missing.cred")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, ConfigError)
    assert "no analyst credential" in str(result.exception)
    assert sink.counts().requests == 0  # refused before any load was sent


def test_rate_and_max_exclude_each_other() -> None:
    args = ["loadtest", "--endpoint", "127.0.0.1:1", "--rate", "10", "--max"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "exclude each other" in result.output


class _EmptyStore:
    """A query client that finds nothing: every acknowledged span is lost."""

    @classmethod
    @contextmanager
    def connect(cls, endpoint: str, *, key_file: Path | None = None) -> Iterator[_EmptyStore]:
        yield cls()

    def get_trace(self, trace_id: bytes) -> TracesData:
        return TracesData()


def test_verify_exits_non_zero_when_acknowledged_spans_are_missing(
    sink: OtlpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import query

    monkeypatch.setattr(query, "QueryClient", _EmptyStore, raising=False)
    out = tmp_path / "report.json"
    args = ["loadtest", "--endpoint", sink.grpc_address, "--rate", "1000", "--duration", "1s",
            "--workers", "1", "--spans-per-request", "100", "--verify", "--sample", "10",
            "--verify-wait", "0s", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "acknowledged spans lost" in result.output
    report = json.loads(out.read_text())
    assert report["verified_traces"] == 0 and report["lost_spans"] > 0
