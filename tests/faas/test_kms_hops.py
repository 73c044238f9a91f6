"""The KMS's derived hop secrets: names, derivation, and release only as the policy lists."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import PolicyError
from tee import Kms, KmsClient, KmsPolicy, Platform, PolicyRule, hop_secret_name, sign_policy
from tee._kms import derive_hop_secret
from tee._policy import base_secret_name

A = hashlib.sha256(b"function a").digest()
B = hashlib.sha256(b"function b").digest()
ADMIN = hashlib.sha256(b"holder of the chain secret").digest()


def test_hop_secret_names_parse_and_are_checked() -> None:
    name = hop_secret_name("shop", 2, A)
    assert name == f"chain/shop/hop/2/{A.hex()}"
    assert base_secret_name(name) == ("chain/shop", (2, A))
    assert base_secret_name("chain/shop") == ("chain/shop", None)
    for bad in (f"chain/shop/hop/02/{A.hex()}", f"chain/shop/hop/1/{A.hex()[:-2]}", "chain/shop/x"):
        with pytest.raises(PolicyError, match="not a secret name"):
            base_secret_name(bad)
    with pytest.raises(PolicyError):
        hop_secret_name("shop", 1, b"short")


def test_kms_derives_hop_secrets_and_releases_only_listed_ones(tmp_path: Path) -> None:
    platform = Platform.open(tmp_path / "platform")
    kms = Kms(tmp_path / "kms", platform, platform.identity(bytes(32), 1))
    owner = Ed25519PrivateKey.generate()
    policy = KmsPolicy(
        rules=(
            PolicyRule(secrets=(hop_secret_name("shop", 0, A),), measurement=A),
            PolicyRule(secrets=("chain/shop",), measurement=ADMIN),
        ),
        trusted_platform_keys=(platform.attestation_public_key,),
        owners=(owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),),
        allow_simulated=True,
    )
    kms.set_policy(sign_policy(policy, owner))
    client = KmsClient.local(kms)
    granted = client.obtain_secrets(
        platform, platform.identity(A, 1), [hop_secret_name("shop", 0, A)]
    )
    chain_secret = client.obtain_secrets(platform, platform.identity(ADMIN, 1), ["chain/shop"])
    expected = derive_hop_secret(chain_secret["chain/shop"], 0, A)
    assert granted == {hop_secret_name("shop", 0, A): expected}
    assert expected != chain_secret["chain/shop"]
    assert derive_hop_secret(chain_secret["chain/shop"], 1, A) != expected
    assert derive_hop_secret(chain_secret["chain/shop"], 0, B) != expected
    # Not the chain secret, not another step, not the same step for another receiver.
    for name in ("chain/shop", hop_secret_name("shop", 1, A), hop_secret_name("shop", 0, B)):
        with pytest.raises(PolicyError, match="does not release"):
            client.obtain_secrets(platform, platform.identity(A, 1), [name])
