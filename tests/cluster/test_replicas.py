"""Three `otrace serve --replica` processes, one PostgreSQL schema, one `otrace kms serve`.

Load goes to a follower while the leader's process group is SIGKILLed (or
SIGSTOPped and resumed): a new leader is elected within 2x the lease, every
acknowledged span is read back through the query API (relayed by a follower),
and no ORAM commit ever lands under a stale term.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from otrace.cli import cli
from otrace.loadtest import LoadReport, run_load, verify_traces
from query import QueryClient
from tests.loadtest.conftest import short_load

from .replicas import POSTGRES_URL, Cluster, commits_by_term, dump, postgres_schema

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(POSTGRES_URL is None, reason="OTRACE_TEST_POSTGRES_URL not set"),
]

LEASE_S = 3.0
NAMES = ["r1", "r2", "r3"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with postgres_schema() as url:
        started = Cluster(tmp_path, url, LEASE_S)
        try:
            started.start_kms()
            for name in NAMES:
                started.start_replica(name)
            started.wait_joined(NAMES)
            yield started
        except BaseException:
            print(dump(started))
            raise
        finally:
            started.stop()


def _assert_terms_never_interleave(url: str) -> list[tuple[int, str, int, int, int]]:
    rows = commits_by_term(url)
    for (t1, _, _, last, _), (t2, _, first, _, _) in itertools.pairwise(rows):
        assert t1 < t2 and last < first, f"term {t1} committed after term {t2} began: {rows}"
    return rows


def _load_in_background(target: str, seconds: float) -> tuple[threading.Thread, list[LoadReport]]:
    out: list[LoadReport] = []
    config = short_load(target, rate=600.0, duration_s=seconds, sample=150, threads=2)

    def run() -> None:
        out.append(run_load(config))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_sigkill_the_leader_under_load(cluster: Cluster) -> None:
    first = cluster.wait_leader(oram=True)
    followers = [n for n in NAMES if n != first.leader]
    otlp, _ = cluster.endpoints(followers[0])
    loader, reports = _load_in_background(otlp, 8.0)
    time.sleep(3.0)
    assert first.leader is not None
    cluster.replicas[first.leader].signal(signal.SIGKILL)  # host and enclave at once
    killed_at = time.monotonic()
    second = cluster.wait_leader(after_term=first.term, timeout=4 * LEASE_S)
    failover_s = time.monotonic() - killed_at
    print(f"failover: term {first.term} ({first.leader}) -> term {second.term} "
          f"({second.leader}) in {failover_s:.2f} s")  # fmt: skip
    assert failover_s <= 2 * LEASE_S, dump(cluster)
    assert second.leader in followers
    loader.join()
    (report,) = reports
    t = report.tally
    assert t.failed == {} and t.acked_spans == t.sent_spans >= 2_000, t

    # Read back through the other follower's query API: relayed to the leader if not it.
    reader = followers[1]
    _, query = cluster.endpoints(reader)
    with QueryClient.connect(query, key_file=cluster.replicas[reader].credential) as client:
        result = verify_traces(client, report.sample, wait_s=30)
    print(f"verified {result.verified_traces} traces, {t.acked_spans} acknowledged spans, "
          f"{result.lost_spans} lost")  # fmt: skip
    assert (result.lost_spans, result.corrupt_spans) == (0, 0), result.problems()
    assert result.verified_traces == len(report.sample)
    rows = _assert_terms_never_interleave(cluster.url)
    print(f"ORAM commits by term: {rows}")
    assert {r[0] for r in rows} >= {first.term, second.term}, rows
    # The killed replica restarts: it unseals its election key and rejoins as a follower.
    cluster.start_replica(first.leader)
    cluster.wait_joined([first.leader])
    assert "already registered" not in cluster.replicas[first.leader].output()


def test_cli_loadtest_verify_through_a_follower(cluster: Cluster, tmp_path: Path) -> None:
    """`otrace loadtest --verify` against a follower: OTLP journaled there, queries relayed."""
    leader = cluster.wait_leader().leader
    follower = next(n for n in NAMES if n != leader)
    otlp, query = cluster.endpoints(follower)
    out = tmp_path / "report.json"
    args = ["loadtest", "--endpoint", otlp, "--rate", "1000", "--duration", "2s",
            "--workers", "1", "--spans-per-request", "100", "--verify", "--sample", "40",
            "--verify-wait", "20s", "--json", str(out), "--query-endpoint", query,
            "--key-file", str(cluster.replicas[follower].credential)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + dump(cluster)
    report = json.loads(out.read_text())
    assert report["verified_traces"] == 40 and report["lost_spans"] == 0
    assert report["acked_spans"] == report["sent_spans"] > 0
    status = CliRunner().invoke(cli, ["cluster", "status", "--store", cluster.url, "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.output)
    assert shown["leader"] == leader and shown["phase"] == "led"
    assert sorted(r["name"] for r in shown["replicas"]) == NAMES


@pytest.mark.slow  # 24 s; CI keeps the SIGKILL failover and the fencing unit tests
def test_a_frozen_leader_is_fenced_when_it_wakes(cluster: Cluster) -> None:
    """SIGSTOP the leader past its lease: a new term is led; on SIGCONT the old leader's
    heartbeat or next ORAM commit raises FencingError and it stops writing."""
    first = cluster.wait_leader(oram=True)
    assert first.leader is not None
    followers = [n for n in NAMES if n != first.leader]
    otlp, _ = cluster.endpoints(followers[0])
    loader, reports = _load_in_background(otlp, 6.0)
    time.sleep(2.0)
    frozen = cluster.replicas[first.leader]
    frozen.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        second = cluster.wait_leader(after_term=first.term, timeout=4 * LEASE_S)
    finally:
        frozen.signal(signal.SIGCONT)
    print(f"frozen {first.leader} (term {first.term}) replaced by {second.leader} "
          f"(term {second.term}) in {time.monotonic() - stopped_at:.2f} s")  # fmt: skip
    assert time.monotonic() - stopped_at <= 2 * LEASE_S + 1.0, dump(cluster)
    deadline = time.monotonic() + 4 * LEASE_S
    while f"stops leading term {first.term}" not in frozen.output():
        assert time.monotonic() < deadline, dump(cluster)
        time.sleep(0.2)
    assert (
        "FencingError" in frozen.output()
        or "stale term" in frozen.output()
        or ("lapsed" in frozen.output())
    ), frozen.output()
    for line in frozen.output().splitlines():
        if "stops leading" in line or "deposed" in line:
            print(f"{first.leader}: {line}")
    loader.join()
    (report,) = reports
    leader = cluster.wait_leader(after_term=first.term).leader
    reader = next(n for n in NAMES if n != leader)
    _, query = cluster.endpoints(reader)
    with QueryClient.connect(query, key_file=cluster.replicas[reader].credential) as client:
        result = verify_traces(client, report.sample, wait_s=30)
    assert (result.lost_spans, result.corrupt_spans) == (0, 0), result.problems()
    rows = _assert_terms_never_interleave(cluster.url)
    assert second.term in {r[0] for r in rows} or second.leader != first.leader, rows
