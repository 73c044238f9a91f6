"""SIGKILL `otrace serve` under loadtest load, restart it, read every acknowledged span back.

`tests/collector/test_crash_restart.py` checks exactly-once storage with a
hand-rolled sender and a full scan; this drives the real harness (`otrace.soak`:
loadtest workers with OTel retry rules, the node in its own process group on
fixed ports) and verifies through the attested query API, as `otrace soak` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from otrace.soak import SoakConfig, run_soak

ROOT = Path(__file__).resolve().parents[2]


def _check(config: SoakConfig) -> dict[str, object]:
    report = run_soak(config)
    figures = report.to_json()
    print(json.dumps(figures))  # the figures docs/RELIABILITY.md quotes (pytest -s)
    assert report.restarts == config.kills
    assert report.load.tally.acked_spans > 0, "no load was acknowledged"
    assert report.verified.checks, "nothing to verify"
    assert report.lost_spans == 0, report.verified.problems()
    assert report.corrupt_spans == 0, report.verified.problems()
    return figures


# CI kills 4 times (two kills within 0.5 s of the load flowing again, two later); the
# 10-kill run is the one docs/RELIABILITY.md quotes.
@pytest.mark.parametrize(
    "kills",
    [pytest.param(4, id="4-kills"), pytest.param(10, id="10-kills", marks=pytest.mark.slow)],
)
def test_kills_lose_no_acknowledged_span(tmp_path: Path, kills: int) -> None:
    _check(SoakConfig(root=tmp_path, kills=kills, rate=40, max_gap_s=1.0))


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("storage", ["oram", "encrypted"])
def test_a_hundred_kills_lose_no_acknowledged_span(tmp_path: Path, storage: str) -> None:
    _check(SoakConfig(root=tmp_path, kills=100, storage=storage, rate=100, seed=7))


@pytest.mark.slow
def test_the_soak_command_reports_json(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "otrace", "soak", "--kills", "2", "--dir", str(tmp_path), "--json", "-"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    figures = json.loads(out.stdout)
    assert figures["kills"] == 2 and figures["lost_spans"] == 0 and figures["acked_spans"] > 0
