"""SIGKILL a writer at random instants; every committed batch survives, whole or not at all."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from oram_store import SqlBucketStore
from tests.oram.helpers import block, new_oram, reopen

ROOT = Path(__file__).resolve().parents[2]
MakeStore = Callable[..., SqlBucketStore]


def _kill_once(url: str, seed: int, rnd: random.Random) -> list[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.oram.crash_writer", url, str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    # Wait for the first commit (start-up takes 0.5 s idle, seconds on a busy
    # machine), then kill somewhere mid-stream.
    assert child.stdout is not None
    lines = []
    while not lines or lines[-1] != "C":
        line = child.stdout.readline()
        assert line, "the writer exited before its first commit"
        lines.append(line.rstrip("\n"))
    time.sleep(rnd.uniform(0.05, 0.8))
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL
    return lines + out.splitlines()


def _apply(lines: list[str], model: dict[int, int]) -> dict[int, int]:
    """Folds committed batches into `model`; returns the in-flight batch (maybe committed)."""
    pending: dict[int, int] = {}
    for line in lines:
        if line.startswith("B "):
            pending = {int(b): int(v) for b, v in (kv.split(":") for kv in line[2:].split())}
        elif line == "C":
            model.update(pending)
            pending = {}
    return pending


def _run(url: str, kills: int, make_store: MakeStore) -> None:
    rnd = random.Random(1234)
    oram = new_oram(make_store(url), blocks=128, batch_size=3, seed=None)
    model: dict[int, int] = {}
    committed_batches = 0
    for i in range(kills):
        lines = _kill_once(url, i + 1, rnd)
        committed_batches += lines.count("C")
        pending = _apply(lines, model)
        oram = reopen(oram)
        seen = {b: oram.read(b) for b in set(model) | set(pending)}
        # The in-flight batch is atomic: all of it landed or none of it did.
        landed = [seen[b] == block(v) for b, v in pending.items()]
        assert all(landed) or not any(landed), f"kill {i}: a batch was torn"
        if pending and all(landed):
            model.update(pending)
        for b, v in model.items():
            assert seen[b] == block(v), f"kill {i}: block {b} lost its committed value"
    report = oram.audit()
    assert report.blocks_in_tree + report.blocks_in_stash == len(model)
    assert committed_batches > kills  # the kills really landed mid-stream


def test_sigkill_during_writes_loses_nothing_committed(
    store_url: str, make_store: MakeStore
) -> None:
    # 6 kills per backend in CI (each costs a writer's start-up, about 1 s); the soak
    # below kills 200 times, and OTRACE_CRASH_KILLS sets how many here.
    _run(store_url, kills=int(os.environ.get("OTRACE_CRASH_KILLS", "6")), make_store=make_store)


@pytest.mark.slow
def test_sigkill_soak(sqlite_url: str, make_store: MakeStore) -> None:
    _run(sqlite_url, kills=200, make_store=make_store)
