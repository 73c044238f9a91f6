"""`otrace bench election` end to end with tiny parameters: every size, phase and figure."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from otrace.bench.election import PHASES
from otrace.cli import cli


def test_bench_election_prints_and_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "election.json"
    args = ["bench", "election", "--replicas", "2,3", "--terms", "3", "--json", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "2 replicas" in result.output and "3 replicas" in result.output
    report = json.loads(out.read_text())
    assert report["replicas"] == [2, 3] and report["terms"] == 3
    for n in (2, 3):
        for phase in PHASES:
            for stat in ("median", "p99"):
                value = report[f"n{n}_{phase.replace(' ', '_')}_{stat}_ms"]
                assert isinstance(value, float) and value > 0, (n, phase, stat)


def test_bench_election_refuses_bad_sizes() -> None:
    result = CliRunner().invoke(cli, ["bench", "election", "--replicas", "3,x"])
    assert result.exit_code != 0 and "comma-separated" in result.output
