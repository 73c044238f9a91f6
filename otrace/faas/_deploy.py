"""Deploying a chain: its KMS rules, and a tracer provider for attested producers."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from opentelemetry.sdk.trace import TracerProvider

from otrace.faas._manifest import ChainManifest
from otrace.faas._producer import ProducerCaService, obtain_producer_credentials
from otrace.faas._tracing import otlp_tracer_provider
from tee import EnclaveIdentity, KmsClient, KmsPolicy, Platform, sign_policy

__all__ = ["attested_tracer_provider", "install_chain"]


def install_chain(
    kms: KmsClient,
    manifest: ChainManifest,
    owner_key: Ed25519PrivateKey,
    *,
    trusted_platform_keys: Sequence[bytes],
    allow_simulated: bool = True,
) -> bytes:
    """Replace the chain's rules in the KMS policy by `manifest.policy_rules()`; new hash.

    Rules for other secrets are kept. `owner_key` must own the current policy.
    """
    current = kms.policy()
    parsed = current.parsed() if current is not None else None
    prefix = f"chain/{manifest.chain_id}/"
    kept = tuple(
        rule
        for rule in (parsed.rules if parsed else ())
        if not any(name.startswith(prefix) for name in rule.secrets)
    )
    owner = owner_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    policy = KmsPolicy(
        rules=(*kept, *manifest.policy_rules()),
        trusted_platform_keys=tuple(trusted_platform_keys),
        owners=parsed.owners if parsed else (owner,),
        predecessor=parsed.digest if parsed else None,
        allow_simulated=allow_simulated,
    )
    return kms.set_policy(sign_policy(policy, owner_key))


def attested_tracer_provider(
    name: str,
    endpoint: str,
    *,
    ca: ProducerCaService,
    server_ca_pem: bytes,
    platform: Platform,
    identity: EnclaveIdentity,
    batch: bool = True,
) -> TracerProvider:
    """A tracer provider whose OTLP/gRPC exporter presents an attested producer certificate."""
    credentials = obtain_producer_credentials(ca, platform, identity, name)
    return otlp_tracer_provider(
        name, endpoint, credentials=credentials.channel_credentials(server_ca_pem), batch=batch
    )
