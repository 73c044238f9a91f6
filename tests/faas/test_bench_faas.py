"""`otrace bench faas` end to end with tiny parameters: every figure present and sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from otrace.cli import cli


@pytest.mark.parametrize("transport", ["local", "grpc"])
def test_bench_faas_reports_overhead_and_cold_start(tmp_path: Path, transport: str) -> None:
    out = tmp_path / "faas.json"
    args = ["bench", "faas", "--invocations", "10", "--cold-starts", "1"]
    args += ["--transport", transport, "--json", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "warm overhead" in result.output
    report = json.loads(out.read_text())
    assert report["invocations"] == 10 and report["arg_bytes"] == 4096
    for key in ("protected_p50_ms", "unprotected_p50_ms", "cold_start_p50_ms"):
        assert report[key] > 0
    assert report["overhead_p50"] == pytest.approx(
        report["protected_p50_ms"] / report["unprotected_p50_ms"] - 1
    )
