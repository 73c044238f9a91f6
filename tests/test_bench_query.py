"""`otrace bench query` end to end on a tiny load: every figure present, every trace found."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from otrace.cli import cli


def test_bench_query_reports_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "query.json"
    args = ["bench", "query", "--spans", "2000", "--queries", "5", "--oram-blocks", "1024"]
    result = CliRunner().invoke(cli, [*args, "--json", str(out), "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("trace_by_id_p50_ms", "trace_by_id_p99_ms", "search_p50_ms", "search_p99_ms"):
        assert report[key] > 0
    for mode in ("oram", "encrypted"):
        figures = report["modes"][mode]
        assert figures["stored_spans"] == 2000
        assert figures["traces_found"] == 5  # every looked-up trace id was acknowledged
    assert "ORAM / encrypted p50" in result.output
