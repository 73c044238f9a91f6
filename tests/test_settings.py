"""Settings precedence: flags > OTRACE_* environment > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from otrace.errors import ConfigError
from otrace.settings import Settings, load_settings, parse_duration, parse_size
from query import QueryBudget


def test_defaults_give_a_single_sqlite_node() -> None:
    s = load_settings({}, {})
    assert s == Settings()
    assert s.store_url == "sqlite:///otrace-data/otrace.sqlite"
    assert (s.otlp_grpc, s.otlp_http, s.storage) == ("127.0.0.1:4317", "127.0.0.1:4318", "oram")


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "otrace.toml"
    config.write_text('[otrace]\nstorage = "encrypted"\nepoch_ms = "1s"\notlp_grpc = "0.0.0.0:1"\n')
    env = {"OTRACE_OTLP_GRPC": "127.0.0.1:2", "OTRACE_MAX_REQUEST_BYTES": "4MiB", "HOME": "/x"}
    s = load_settings({"otlp_grpc": "127.0.0.1:3", "data_dir": None}, env, config)
    assert s.otlp_grpc == "127.0.0.1:3"  # flag
    assert s.max_request_bytes == 4 << 20  # env
    assert (s.storage, s.epoch_ms) == ("encrypted", 1000)  # file
    assert s.data_dir == Path("otrace-data")  # default (an unset flag is None)


def test_auth_token_never_shows_in_repr() -> None:
    assert "s3cret" not in repr(load_settings({}, {"OTRACE_AUTH_TOKEN": "s3cret"}))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"storage": "plain"}, "storage must be 'oram' or 'encrypted'"),
        ({"epoch_ms": "soon"}, "bad duration 'soon'"),
        ({"max_request_bytes": "lots"}, "bad size 'lots'"),
        ({"oram_blocks": "many"}, "oram_blocks must be a whole number"),
        ({"tls_cert": "c.pem"}, "TLS needs both"),
        ({"retention": "forever"}, "bad duration 'forever'"),
        ({"search_reads": "1"}, r"search_reads \(1\) must split into 2 equal batches"),
        ({"trace_reads": "33"}, r"trace_reads \(33\) must split into 2 equal batches"),
        ({"build_workers": "0"}, "build_workers must be positive"),
    ],
)
def test_bad_settings_say_what_to_do(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(flags, {})


def test_bad_config_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("storage = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, {}, bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('colour = "blue"\n')
    with pytest.raises(ConfigError, match="unknown settings colour"):
        load_settings({}, {}, unknown)


def test_retention_takes_a_duration_and_reads_split_into_batches() -> None:
    settings = load_settings({"retention": "12h", "search_reads": "96"}, {})
    assert settings.retention == 12 * 3600
    budget = QueryBudget.from_reads(
        settings.trace_reads, settings.search_reads, settings.oram_batch
    )
    assert (budget.trace_width, budget.trace_batches) == (16, 1)
    assert (budget.search_width, budget.search_batches) == (32, 3)


def test_units() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("7d") == 7 * 86400
    assert parse_size("16MiB") == 16 << 20 and parse_size("512KiB") == 512 << 10


def test_build_workers_from_the_environment() -> None:
    assert load_settings({}, {"OTRACE_BUILD_WORKERS": "3"}).build_workers == 3
    assert load_settings({}, {}).build_workers == 2
