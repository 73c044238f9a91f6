"""An in-process chain: platform, KMS with the chain's hop rules, three hosts, gateway."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from opentelemetry.trace import TracerProvider

from otrace.faas import (
    ChainFunction,
    ChainManifest,
    Controller,
    FunctionEntry,
    FunctionHost,
    Gateway,
    LocalTransport,
    SignedManifest,
    gateway_measurement,
    install_chain,
    sign_manifest,
)
from tee import Kms, KmsClient, Platform
from tests.faas.chain_functions import CALLS, CHAIN

HOUR_MS = 3_600_000
KMS_MEASUREMENT = bytes(range(32))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Chain:
    platform: Platform
    kms: Kms
    client: KmsClient
    owner: Ed25519PrivateKey
    manifest: ChainManifest
    signed: SignedManifest
    clock: FakeClock
    hosts: dict[str, FunctionHost]
    gateway: Gateway
    make_host: Callable[..., FunctionHost] = field(repr=False)

    @property
    def owners(self) -> list[bytes]:
        return [self.owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)]

    def sign(self, manifest: ChainManifest) -> SignedManifest:
        return sign_manifest(manifest, self.owner)


def build_chain(
    tmp_path: Path,
    *,
    platform: Platform | None = None,
    providers: dict[str, TracerProvider] | None = None,
    clock: FakeClock | None = None,
    ttl_ms: int = 60_000,
) -> Chain:
    platform = platform or Platform.open(tmp_path / "platform")
    clock = clock or FakeClock()
    providers = providers or {}
    kms = Kms(tmp_path / "kms", platform, platform.identity(KMS_MEASUREMENT, 1))
    client = KmsClient.local(kms)
    owner = Ed25519PrivateKey.generate()
    manifest = ChainManifest(
        "shop",
        tuple(FunctionEntry(f.name, f.measurement) for f in CHAIN),
        gateway=gateway_measurement(),
        not_after_ms=int(clock() * 1000) + HOUR_MS,
        request_ttl_ms=ttl_ms,
    )
    signed = sign_manifest(manifest, owner)
    install_chain(client, manifest, owner, trusted_platform_keys=[platform.attestation_public_key])
    owners = [owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)]

    def make_host(function: ChainFunction, **options: object) -> FunctionHost:
        options.setdefault("tracer_provider", providers.get(function.name))
        options.setdefault("manifests", [signed])
        return FunctionHost(function, platform, client, owners=owners, clock=clock, **options)  # type: ignore[arg-type]

    hosts = {f.name: make_host(f) for f in CHAIN}
    controller = Controller({name: LocalTransport(h.handle) for name, h in hosts.items()})
    gateway = Gateway(
        signed,
        platform,
        client,
        LocalTransport(controller.route),
        owners=owners,
        clock=clock,
        tracer_provider=providers.get("gateway"),
    )
    return Chain(platform, kms, client, owner, manifest, signed, clock, hosts, gateway, make_host)


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    CALLS.clear()
    return build_chain(tmp_path)
