"""Replica settings are checked at the CLI edge; `cluster status` on a store without a cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector import ElectionStore, cluster_status
from collector._cluster import announce, cluster_tables
from oram_store import SqlBucketStore
from otrace.cli import cli
from otrace.errors import ConfigError
from otrace.settings import Settings, load_settings
from tee import Verifier
from tee.ssle import ReplicaKey, Shuffler

PG = "postgresql+psycopg://u@db/otrace"
KEY = "ab" * 32


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"store": ""}, "share one PostgreSQL store"),
        ({"store": "sqlite:///x.sqlite"}, "share one PostgreSQL store"),
        ({"kms": ""}, "pass --kms HOST:PORT"),
        ({"kms_key": "abcd"}, "64 hex digits"),
        ({"storage": "encrypted"}, "oram only"),
        ({"replica": "x" * 65}, "1 to 64 printable"),
    ],
)
def test_a_replica_needs_a_shared_store_and_a_pinned_kms(
    changes: dict[str, str], message: str
) -> None:
    fields = {"replica": "r1", "store": PG, "kms": "127.0.0.1:7750", "kms_key": KEY, **changes}
    with pytest.raises(ConfigError, match=message):
        Settings(**fields)  # type: ignore[arg-type]


def test_lease_flags_take_durations_and_env_names_match() -> None:
    env = {"OTRACE_KMS": "10.0.0.5:7750", "OTRACE_KMS_KEY": KEY, "OTRACE_STORE": PG}
    s = load_settings({"replica": "r2", "lease_ms": "2s", "election_ms": "1500ms"}, env)
    assert (s.replica, s.kms, s.lease_ms, s.election_ms) == ("r2", "10.0.0.5:7750", 2000, 1500)
    assert Settings().replica == ""  # a single node by default


def test_cluster_status_on_a_store_without_a_cluster(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    with pytest.raises(ConfigError, match="no otrace cluster in this store"):
        cluster_status(url)
    result = CliRunner().invoke(cli, ["cluster", "status", "--store", url])
    assert isinstance(result.exception, ConfigError)


def test_cluster_status_shows_the_leader_only_once_claimed(
    tmp_path: Path, verifier: Verifier, keys: list[ReplicaKey], shuffler: Shuffler
) -> None:
    url = f"sqlite:///{tmp_path / 'cluster.sqlite'}"
    store = SqlBucketStore(url)
    try:
        election = ElectionStore(store, verifier=verifier)
        cluster_tables(store.engine)
        for key in keys[:3]:
            election.register(key.name, key.public_key)
            announce(store.engine, key.name, "127.0.0.1:1", "127.0.0.1:2", now=time.time())
        term = election.open_term()
        for key in keys[:3]:
            election.submit_tracker(key.tracker_for(term))
        draw = election.publish_shuffle(shuffler.shuffle(term, election.trackers(term)))
        before = cluster_status(url)
        assert (before.term, before.leader, before.to_json(time.time())["phase"]) == (
            1,
            None,
            "shuffled, awaiting claim",
        )
        (owner,) = [k for k in keys[:3] if k.recognises(draw.tracker)]
        election.claim(owner.claim(draw))
        result = CliRunner().invoke(cli, ["cluster", "status", "--store", url])
        assert result.exit_code == 0, result.output
        assert owner.name in result.output and "not created yet" in result.output
        assert cluster_status(url).leader == owner.name
    finally:
        store.close()
