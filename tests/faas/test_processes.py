"""The chain as separate processes: `otrace faas worker|controller|gateway|invoke` over gRPC.

The KMS runs in the test process (served over gRPC); three workers, the
controller and the gateway are each their own `python -m otrace` process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.faas import (
    ChainManifest,
    FunctionEntry,
    gateway_measurement,
    install_chain,
    sign_manifest,
)
from tee import Kms, KmsClient, Platform, serve_kms
from tests.faas.chain_functions import CHAIN
from tests.faas.conftest import KMS_MEASUREMENT

ROOT = Path(__file__).resolve().parents[2]


class Roles:
    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> str:
        """Start `otrace faas ARGS` and return the address it listens on."""
        process = subprocess.Popen(
            [sys.executable, "-m", "otrace", "faas", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if " listening on " not in line:
            process.kill()
            _, stderr = process.communicate()
            raise AssertionError(f"{args[0]} did not start: {line}{stderr}")
        return line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


@pytest.fixture
def roles() -> Iterator[Roles]:
    started = Roles()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.timeout(90)
def test_chain_runs_across_processes(tmp_path: Path, roles: Roles) -> None:
    platform_dir = tmp_path / "platform"
    platform = Platform.open(platform_dir)
    kms = Kms(tmp_path / "kms", platform, platform.identity(KMS_MEASUREMENT, 1))
    server = serve_kms(kms, "127.0.0.1:0")
    try:
        owner = Ed25519PrivateKey.generate()
        manifest = ChainManifest(
            "shop",
            tuple(FunctionEntry(f.name, f.measurement) for f in CHAIN),
            gateway=gateway_measurement(),
            not_after_ms=4_000_000_000_000,
        )
        install_chain(
            KmsClient.local(kms),
            manifest,
            owner,
            trusted_platform_keys=[platform.attestation_public_key],
        )
        manifest_file = tmp_path / "shop.manifest"
        manifest_file.write_bytes(sign_manifest(manifest, owner).to_bytes())
        enclave = [
            f"--kms=127.0.0.1:{server.port}",
            f"--kms-key={kms.public_key.hex()}",
            f"--owner={owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()}",
            f"--platform-dir={platform_dir}",
        ]
        routes = [
            f"--route={f.name}="
            + roles.start(
                "worker",
                f"--function=tests.faas.chain_functions:{f.name}",
                f"--manifest={manifest_file}",
                *enclave,
            )
            for f in CHAIN
        ]
        controller = roles.start("controller", *routes)
        gateway = roles.start(
            "gateway", f"--manifest={manifest_file}", f"--controller={controller}", *enclave
        )
        arguments = json.dumps({"items": [1, 2, 3]})
        run = subprocess.run(
            [sys.executable, "-m", "otrace", "faas", "invoke", f"--gateway={gateway}", arguments],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == {"total": 6, "tenant": "", "step": 2}
    finally:
        server.stop()
