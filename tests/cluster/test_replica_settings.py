"""Replica settings are checked at the CLI edge; `cluster status` on a store without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from collector import cluster_status
from otrace.cli import cli
from otrace.errors import ConfigError
from otrace.settings import Settings, load_settings

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
