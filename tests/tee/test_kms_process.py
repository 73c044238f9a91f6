"""The KMS as its own process (`otrace kms serve` on port 0) with real gRPC clients, and a
one-byte change of enclave code that changes the measurement and is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from otrace.cli import cli
from otrace.errors import AttestationError, PolicyError
from tee import (
    SECURITY_VERSION,
    KmsClient,
    Platform,
    measure_code,
    trusted_package_roots,
)


@pytest.fixture(scope="module")
def kms_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    base = tmp_path_factory.mktemp("kms-process")
    platform_dir, state_dir = base / "platform", base / "kms-state"
    Platform.open(platform_dir)
    command = [
        sys.executable,
        "-c",
        "from otrace.cli import main; main()",
        "kms",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(state_dir),
    ]
    env = {**os.environ, "OTRACE_PLATFORM_DIR": str(platform_dir)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("KMS listening on 127.0.0.1:"), line
        words = line.split()
        yield words[3], platform_dir, base, bytes.fromhex(words[5])
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None:
        raise result.exception
    return result.output


def test_policy_set_show_and_release_across_processes(kms_process) -> None:
    target, platform_dir, base, kms_key = kms_process
    platform = Platform.open(platform_dir)
    this_build = platform.identity(measure_code(), SECURITY_VERSION)
    policy = {
        "predecessor": None,
        "trusted_platform_keys": [platform.attestation_public_key.hex()],
        "allow_simulated": True,
        "rules": [
            {"measurement": this_build.measurement.hex(), "secrets": ["oram_key", "state_key"]}
        ],
    }
    (base / "policy.json").write_text(json.dumps(policy))
    owner_key = str(base / "owner.key")
    assert _cli(
        "kms", "policy", "set", str(base / "policy.json"), "--kms", target, "--owner-key", owner_key
    ).startswith("policy installed: ")
    shown = json.loads(_cli("kms", "policy", "show", "--kms", target))
    assert shown["policy"]["rules"][0]["measurement"] == this_build.measurement.hex()

    with KmsClient.connect(target, kms_key=kms_key) as client:
        secrets = client.obtain_secrets(platform, this_build, ["oram_key", "state_key"])
        assert sorted(secrets) == ["oram_key", "state_key"]
        with pytest.raises(PolicyError, match=r"^the policy does not release index_key to enclave"):
            client.obtain_secrets(platform, this_build, ["index_key"])
    attest = ("attest", "--platform-dir", str(platform_dir), "--kms", target)
    assert _cli(*attest, "--kms-key", kms_key.hex()).startswith(
        f"KMS at {target} accepted this enclave"
    )

    # An update naming a stale predecessor is refused by the running KMS ...
    (base / "stale.json").write_text(json.dumps(policy))
    with pytest.raises(PolicyError, match=r"^policy update must name the current policy"):
        _cli(
            "kms",
            "policy",
            "set",
            str(base / "stale.json"),
            "--kms",
            target,
            "--owner-key",
            owner_key,
        )
    # ... and it keeps serving.
    with KmsClient.connect(target, kms_key=kms_key) as client:
        assert client.obtain_secrets(platform, this_build, ["oram_key"]) == {
            "oram_key": secrets["oram_key"]
        }


def test_one_changed_byte_of_enclave_code_is_refused(kms_process, tmp_path: Path) -> None:
    target, platform_dir, _, kms_key = kms_process
    platform = Platform.open(platform_dir)
    copies = []
    for root in trusted_package_roots():
        shutil.copytree(root, tmp_path / root.name, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(tmp_path / root.name)
    assert measure_code(copies) == measure_code()  # a faithful copy measures the same

    sealing = tmp_path / "tee" / "_sealing.py"
    source = bytearray(sealing.read_bytes())
    source[source.index(b"SEAL_VERSION = 1") + len("SEAL_VERSION = ")] = ord("2")
    sealing.write_bytes(bytes(source))
    tampered = measure_code(copies)
    assert tampered != measure_code()

    with KmsClient.connect(target, kms_key=kms_key) as client:
        if client.policy() is None:
            pytest.skip("needs the policy installed by the previous test")
        with pytest.raises(
            AttestationError, match=rf"^enclave measurement {tampered.hex()} is not allow-listed$"
        ):
            client.obtain_secrets(
                platform, platform.identity(tampered, SECURITY_VERSION), ["oram_key"]
            )
        this_build = platform.identity(measure_code(), SECURITY_VERSION)
        assert set(client.obtain_secrets(platform, this_build, ["oram_key"])) == {"oram_key"}


def test_config_is_part_of_the_measurement() -> None:
    roots = trusted_package_roots(["tee"])
    assert measure_code(roots, {"debug": False}) != measure_code(roots, {"debug": True})
    assert measure_code(roots, {"a": 1, "b": 2}) == measure_code(roots, {"b": 2, "a": 1})
