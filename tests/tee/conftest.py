"""Fixtures for the emulated enclave: a platform on disk, an identity, a strict verifier."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tee import EnclaveIdentity, Platform, Verifier

MEASUREMENT = hashlib.sha256(b"good enclave build").digest()
OTHER_MEASUREMENT = hashlib.sha256(b"some other build").digest()


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    return Platform.open(tmp_path / "platform")


@pytest.fixture
def identity(platform: Platform) -> EnclaveIdentity:
    return platform.identity(MEASUREMENT, security_version=3)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_verifier(platform: Platform, clock: FakeClock) -> Callable[..., Verifier]:
    def make(**overrides: object) -> Verifier:
        settings: dict[str, object] = {
            "trusted_platform_keys": [platform.attestation_public_key],
            "allowed_measurements": [MEASUREMENT],
            "allow_simulated": True,
            "nonce_ttl": 30.0,
            "clock": clock,
        }
        settings.update(overrides)
        return Verifier(**settings)  # type: ignore[arg-type]

    return make
