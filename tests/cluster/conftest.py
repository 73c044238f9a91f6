"""Fixtures for the election: a platform, the shuffler enclave's identity, its verifier."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest

from tee import EnclaveIdentity, Platform, Verifier
from tee.ssle import ReplicaKey, Shuffler

SHUFFLER_MEASUREMENT = hashlib.sha256(b"otrace ssle shuffler build").digest()
OTHER_MEASUREMENT = hashlib.sha256(b"some other enclave build").digest()


def seeded(seed: int) -> Callable[[int], bytes]:
    """A deterministic random source (the twin of secrets.token_bytes)."""
    return random.Random(seed).randbytes


class FakeClock:
    """Wall time tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def platform() -> Platform:
    return Platform.from_secrets(bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34)))


@pytest.fixture
def shuffler_identity(platform: Platform) -> EnclaveIdentity:
    return platform.identity(SHUFFLER_MEASUREMENT, security_version=1)


@pytest.fixture
def shuffler(platform: Platform, shuffler_identity: EnclaveIdentity) -> Shuffler:
    return Shuffler(platform, shuffler_identity, rng=seeded(7))


@pytest.fixture
def verifier(platform: Platform) -> Verifier:
    return Verifier(
        trusted_platform_keys=[platform.attestation_public_key],
        allowed_measurements=[SHUFFLER_MEASUREMENT],
        allow_simulated=True,
    )


@pytest.fixture
def keys() -> list[ReplicaKey]:
    rng = seeded(1)
    return [ReplicaKey.generate(f"replica-{i}", rng=rng) for i in range(5)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
