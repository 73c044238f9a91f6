"""`otrace bench oram` end to end on a tiny tree: every figure present, positive, in JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from otrace.cli import cli

REQUIRED = (
    "otrace_single_ops_per_s",
    "otrace_batched_ops_per_s",
    "pyoram_ops_per_s",
    "floor_ops_per_s",
    "peak_rss_mib",
    "init_s",
)
TINY = ["--blocks", "256", "--block-size", "64", "--accesses", "50", "--batch", "8"]


def _run(tmp_path: Path, *extra: str) -> dict[str, object]:
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    work.mkdir()
    args = ["bench", "oram", *TINY, "--cache-levels", "2", "--json", str(out), "--dir", str(work)]
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 0, result.output
    assert "otrace single" in result.output and "storage floor" in result.output
    assert list(work.iterdir()) == [], "temporary databases were left behind"
    report = json.loads(out.read_text())
    assert isinstance(report, dict)
    return report


def test_bench_oram_without_pyoram(tmp_path: Path) -> None:
    report = _run(tmp_path, "--skip-pyoram")
    for key in REQUIRED:
        assert key in report, key
    assert report["pyoram_ops_per_s"] is None
    assert report["pyoram_fsync_ops_per_s"] is None
    for key in REQUIRED:
        if key != "pyoram_ops_per_s":
            value = report[key]
            assert isinstance(value, float) and value > 0, (key, value)
    assert report["height"] == 6 and report["blocks"] == 256  # 64 leaves of Z=4


@pytest.mark.skipif(importlib.util.find_spec("pyoram") is None, reason="bench extra not installed")
def test_bench_oram_with_pyoram(tmp_path: Path) -> None:
    report = _run(tmp_path)
    for key in REQUIRED:
        value = report[key]
        assert isinstance(value, float) and value > 0, (key, value)
    assert report["pyoram_height"] == 8
    fsynced = report["pyoram_fsync_ops_per_s"]
    assert isinstance(fsynced, float) and fsynced > 0


def test_bench_oram_rejects_a_batch_larger_than_the_tree(tmp_path: Path) -> None:
    args = ["bench", "oram", "--blocks", "16", "--batch", "32", "--dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "--batch" in str(result.exception) + result.output
