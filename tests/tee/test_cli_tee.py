"""`otrace attest` and `otrace kms`: identity output, evidence round trip, settings precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from otrace.cli import cli
from otrace.errors import AttestationError, ConfigError
from tee import SECURITY_VERSION, Platform, measure_code


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_attest_prints_this_builds_identity(tmp_path: Path) -> None:
    result = _run("attest", "--platform-dir", str(tmp_path / "p"), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    platform = Platform.open(tmp_path / "p")
    assert shown["measurement"] == measure_code().hex()
    assert shown["signer"] == platform.identity(measure_code(), 1).signer.hex()
    assert shown["security_version"] == SECURITY_VERSION
    assert shown["simulated"] is True
    assert shown["platform_key"] == platform.attestation_public_key.hex()


def test_attest_table_output(tmp_path: Path) -> None:
    result = _run("attest", "--platform-dir", str(tmp_path / "p"))
    assert result.exit_code == 0
    assert result.output.splitlines()[0].startswith("measurement ")


def test_flag_beats_env_beats_default(tmp_path: Path) -> None:
    env = {"OTRACE_PLATFORM_DIR": str(tmp_path / "from-env")}
    assert _run("attest", env=env).exit_code == 0
    assert (tmp_path / "from-env" / "root.key").exists()
    assert _run("attest", "--platform-dir", str(tmp_path / "from-flag"), env=env).exit_code == 0
    assert (tmp_path / "from-flag" / "root.key").exists()


def test_quote_round_trip_and_replay(tmp_path: Path) -> None:
    platform_dir, evidence, nonce = str(tmp_path / "p"), str(tmp_path / "q.cbor"), "ab" * 32
    common = ("attest", "--platform-dir", platform_dir, "--nonce", nonce)
    assert _run(*common, "--quote-out", evidence).exit_code == 0
    result = _run(*common, "--verify-quote", evidence, "--allow-simulated")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("quote OK: measurement ")
    strict = _run(*common, "--verify-quote", evidence)
    assert isinstance(strict.exception, AttestationError)
    assert "simulated enclave" in str(strict.exception)


def test_quote_for_another_nonce_is_refused(tmp_path: Path) -> None:
    platform_dir, evidence = str(tmp_path / "p"), str(tmp_path / "q.cbor")
    base = ("attest", "--platform-dir", platform_dir)
    assert _run(*base, "--nonce", "ab" * 32, "--quote-out", evidence).exit_code == 0
    result = _run(*base, "--nonce", "cd" * 32, "--verify-quote", evidence, "--allow-simulated")
    assert isinstance(result.exception, AttestationError)
    assert str(result.exception) == "quote report data does not bind this public key and nonce"


def test_quote_from_another_measurement_is_refused(tmp_path: Path) -> None:
    platform_dir, evidence, nonce = str(tmp_path / "p"), str(tmp_path / "q.cbor"), "ab" * 32
    common = ("attest", "--platform-dir", platform_dir, "--nonce", nonce)
    assert _run(*common, "--quote-out", evidence).exit_code == 0
    result = _run(
        *common, "--verify-quote", evidence, "--allow-simulated", "--measurement", "00" * 32
    )
    assert isinstance(result.exception, AttestationError)
    assert "is not allow-listed" in str(result.exception)


def test_policy_commands_need_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTRACE_KMS", raising=False)
    result = _run("kms", "policy", "show")
    assert isinstance(result.exception, ConfigError)
    assert "pass --kms HOST:PORT or set OTRACE_KMS" in str(result.exception)


def test_main_renders_library_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    from otrace.cli import main

    (tmp_path / "p").mkdir(mode=0o755)
    monkeypatch.setattr("sys.argv", ["otrace", "attest", "--platform-dir", str(tmp_path / "p")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert "chmod 700" in capsys.readouterr().err
