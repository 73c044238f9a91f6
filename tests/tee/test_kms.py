"""The KMS from the attacker's side: secrets only to attested, allow-listed enclaves,
only the names their policy lists, policy updates only from the right predecessor
and owner; after every refusal the KMS keeps serving."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import (
    AttestationError,
    ChannelError,
    ConfigError,
    IntegrityError,
    InvalidRequest,
    PolicyError,
    RollbackError,
)
from tee import (
    EnclaveIdentity,
    Kms,
    KmsClient,
    KmsPolicy,
    Platform,
    PolicyRule,
    ReleaseRequest,
    Sealer,
    accept_enclave,
    open_channel,
    serve_kms,
    sign_policy,
)
from tee._encoding import decode_canonical, encode_canonical
from tee._kms_service import encode_message
from tests.tee.conftest import MEASUREMENT, OTHER_MEASUREMENT, FakeClock

ALL = ("oram_key", "index_key", "state_key")


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass
class Deployment:
    platform: Platform
    kms: Kms
    client: KmsClient
    owner: Ed25519PrivateKey
    good: EnclaveIdentity
    policy: KmsPolicy

    def obtain(self, identity: EnclaveIdentity, names=ALL, platform=None) -> dict[str, bytes]:
        return self.client.obtain_secrets(platform or self.platform, identity, names)

    def still_serving(self) -> None:
        assert set(self.obtain(self.good)) == set(ALL)


def make_policy(platform: Platform, owner: Ed25519PrivateKey, **changes: object) -> KmsPolicy:
    policy = KmsPolicy(
        rules=(
            PolicyRule(secrets=(*ALL, "chain/checkout"), measurement=MEASUREMENT),
            PolicyRule(secrets=("index_key",), signer=b"\x55" * 32, min_security_version=2),
        ),
        trusted_platform_keys=(platform.attestation_public_key,),
        owners=(_public(owner),),
        allow_simulated=True,
    )
    return replace(policy, **changes)  # type: ignore[arg-type]


@pytest.fixture
def deployment(platform: Platform, identity: EnclaveIdentity, tmp_path: Path, clock: FakeClock):
    kms_identity = platform.identity(b"\x4b" * 32, 1)
    kms = Kms(tmp_path / "kms", platform, kms_identity, clock=clock)
    owner = Ed25519PrivateKey.generate()
    policy = make_policy(platform, owner)
    client = KmsClient.local(kms)
    client.set_policy(sign_policy(policy, owner))
    return Deployment(platform, kms, client, owner, identity, policy)


@pytest.fixture
def remote(deployment: Deployment) -> Iterator[Deployment]:
    """The same KMS behind a real gRPC server on port 0 and a real gRPC client."""
    server = serve_kms(deployment.kms, "127.0.0.1:0")
    client = KmsClient.connect(f"127.0.0.1:{server.port}", kms_key=deployment.kms.public_key)
    try:
        yield replace(deployment, client=client)
    finally:
        client.close()
        server.stop(None)


@pytest.fixture(params=["local", "grpc"])
def kms(request: pytest.FixtureRequest, deployment: Deployment) -> Deployment:
    return deployment if request.param == "local" else request.getfixturevalue("remote")


def test_allow_listed_enclave_gets_its_secrets(kms: Deployment) -> None:
    secrets = kms.obtain(kms.good, ("oram_key", "state_key", "chain/checkout"))
    assert sorted(secrets) == ["chain/checkout", "oram_key", "state_key"]
    assert all(len(value) == 32 for value in secrets.values())
    assert kms.obtain(kms.good, ("oram_key",)) == {"oram_key": secrets["oram_key"]}
    # The released state_key seals through the ORAM's StateSealer adapter.
    sealer = Sealer.from_key(secrets["state_key"])
    assert sealer.unseal(sealer.seal(b"oram state", b"tree-1"), b"tree-1") == b"oram state"


def test_signer_rule_admits_any_measurement_by_that_signer(kms: Deployment) -> None:
    identity = EnclaveIdentity(OTHER_MEASUREMENT, b"\x55" * 32, 2)
    assert set(kms.obtain(identity, ("index_key",))) == {"index_key"}


def test_secret_not_in_policy_is_refused(kms: Deployment) -> None:
    identity = EnclaveIdentity(OTHER_MEASUREMENT, b"\x55" * 32, 2)
    expected = f"the policy does not release oram_key to enclave {OTHER_MEASUREMENT.hex()}"
    with pytest.raises(PolicyError, match=f"^{expected}$"):
        kms.obtain(identity, ("index_key", "oram_key"))
    kms.still_serving()


def test_non_allow_listed_enclave_is_refused(kms: Deployment) -> None:
    stranger = kms.platform.identity(OTHER_MEASUREMENT, 3)
    with pytest.raises(
        AttestationError, match=r"^enclave is not allow-listed: neither measurement"
    ):
        kms.obtain(stranger, ("oram_key",))
    kms.still_serving()


def test_low_security_version_is_refused(kms: Deployment) -> None:
    old = EnclaveIdentity(OTHER_MEASUREMENT, b"\x55" * 32, 1)
    with pytest.raises(
        AttestationError, match=r"^enclave security version 1 is below the policy minimum 2$"
    ):
        kms.obtain(old, ("index_key",))
    kms.still_serving()


def test_unattested_enclave_on_untrusted_platform_is_refused(kms: Deployment, tmp_path) -> None:
    rogue = Platform.open(tmp_path / "rogue")
    with pytest.raises(AttestationError, match=r"does not verify under any trusted platform key"):
        kms.obtain(kms.good, ("oram_key",), platform=rogue)
    kms.still_serving()


def test_garbage_quote_is_refused(kms: Deployment) -> None:
    nonce = kms.kms.challenge()
    request = {
        "quote": b"forged",
        "public_key": b"\x09" * 32,
        "nonce": nonce,
        "names": ["oram_key"],
    }
    with pytest.raises(AttestationError, match=r"^quote is malformed or truncated"):
        kms.client._transport.call("Release", encode_message(request))
    kms.still_serving()


def test_malformed_request_is_refused(kms: Deployment) -> None:
    with pytest.raises(InvalidRequest, match=r"^malformed KMS Release request"):
        kms.client._transport.call("Release", b"\xff\x00")
    kms.still_serving()


def test_simulated_enclave_refused_when_policy_is_strict(kms: Deployment) -> None:
    strict = make_policy(
        kms.platform, kms.owner, allow_simulated=False, predecessor=kms.policy.digest
    )
    kms.client.set_policy(sign_policy(strict, kms.owner))
    with pytest.raises(AttestationError, match=r"simulated enclave"):
        kms.obtain(kms.good, ("oram_key",))


def test_replayed_release_is_refused(deployment: Deployment) -> None:
    kms = deployment.kms
    platform, identity = deployment.platform, deployment.good
    nonce = kms.challenge()
    hello = open_channel(platform, identity, nonce)
    request = ReleaseRequest(hello.quote, hello.public_key, nonce, ("oram_key",))
    kms.release(request)
    with pytest.raises(AttestationError, match=re.escape("already used (replayed quote)")):
        kms.release(request)
    deployment.still_serving()


def test_stolen_release_response_is_useless(deployment: Deployment) -> None:
    # An eavesdropper sees the quote and the answer but not the enclave's private key.

    nonce = deployment.kms.challenge()
    hello = open_channel(deployment.platform, deployment.good, nonce)
    response = deployment.kms.release(ReleaseRequest(hello.quote, hello.public_key, nonce, ALL))
    _, attacker = accept_enclave(response.public_key, hello.quote, nonce)
    with pytest.raises(ChannelError, match=r"failed authentication"):
        attacker.open(response.record)


def test_policy_update_with_wrong_predecessor_is_refused(kms: Deployment) -> None:
    update = make_policy(kms.platform, kms.owner, predecessor=b"\x00" * 32, rules=())
    expected = (
        f"^policy update names predecessor {'00' * 32} "
        f"but the current policy is {kms.policy.digest.hex()}$"
    )
    with pytest.raises(PolicyError, match=expected):
        kms.client.set_policy(sign_policy(update, kms.owner))
    kms.still_serving()


def test_policy_update_without_predecessor_is_refused(kms: Deployment) -> None:
    update = make_policy(kms.platform, kms.owner, rules=())
    expected = (
        f"^policy update must name the current policy {kms.policy.digest.hex()} as predecessor$"
    )
    with pytest.raises(PolicyError, match=expected):
        kms.client.set_policy(sign_policy(update, kms.owner))
    kms.still_serving()


def test_lost_update_is_refused(kms: Deployment) -> None:
    first = make_policy(kms.platform, kms.owner, predecessor=kms.policy.digest)
    second = make_policy(kms.platform, kms.owner, predecessor=kms.policy.digest, rules=())
    kms.client.set_policy(sign_policy(first, kms.owner))
    with pytest.raises(PolicyError, match=r"names predecessor .* but the current policy is"):
        kms.client.set_policy(sign_policy(second, kms.owner))
    kms.still_serving()


def test_policy_update_by_non_owner_is_refused(kms: Deployment) -> None:
    intruder = Ed25519PrivateKey.generate()
    update = make_policy(kms.platform, intruder, predecessor=kms.policy.digest)
    with pytest.raises(
        PolicyError, match=r"^policy update is not signed by an owner of the current policy$"
    ):
        kms.client.set_policy(sign_policy(update, intruder))
    kms.still_serving()


def test_policy_with_forged_signature_is_refused(kms: Deployment) -> None:
    update = sign_policy(
        make_policy(kms.platform, kms.owner, predecessor=kms.policy.digest), kms.owner
    )
    forged = replace(update, signature=bytes(64))
    with pytest.raises(PolicyError, match=r"^policy signature does not verify$"):
        kms.client.set_policy(forged)
    kms.still_serving()


def test_valid_update_changes_what_is_released(kms: Deployment) -> None:
    narrower = make_policy(
        kms.platform,
        kms.owner,
        predecessor=kms.policy.digest,
        rules=(PolicyRule(secrets=("index_key",), measurement=MEASUREMENT),),
    )
    before = kms.obtain(kms.good, ("index_key",))
    digest = kms.client.set_policy(sign_policy(narrower, kms.owner))
    assert digest == narrower.digest
    assert kms.obtain(kms.good, ("index_key",)) == before  # secrets survive updates
    with pytest.raises(PolicyError, match=r"does not release oram_key"):
        kms.obtain(kms.good, ("oram_key",))
    current = kms.client.policy()
    assert current is not None and current.parsed() == narrower


def test_answer_from_another_kms_is_refused(kms: Deployment, tmp_path: Path) -> None:
    impostor = Ed25519PrivateKey.generate()
    pinned_wrong = KmsClient(kms.client._transport, kms_key=_public(impostor))
    with pytest.raises(AttestationError, match=r"^KMS answer is not signed by the pinned KMS key$"):
        pinned_wrong.obtain_secrets(kms.platform, kms.good, ("oram_key",))
    kms.still_serving()


def test_secrets_need_a_pinned_kms_key(kms: Deployment) -> None:
    unpinned = KmsClient(kms.client._transport)
    with pytest.raises(ConfigError, match=r"^pin the KMS public key"):
        unpinned.obtain_secrets(kms.platform, kms.good, ("oram_key",))


def test_unknown_secret_name_is_refused(kms: Deployment) -> None:
    with pytest.raises(PolicyError, match=r"is not a secret name"):
        kms.obtain(kms.good, ("root_password",))


def test_kms_without_policy_refuses(platform: Platform, identity, tmp_path: Path) -> None:
    client = KmsClient.local(Kms(tmp_path / "empty", platform, identity))
    assert client.policy() is None
    with pytest.raises(PolicyError, match=r"^the KMS has no policy yet"):
        client.obtain_secrets(platform, identity, ("oram_key",))


def test_state_survives_restart_and_is_sealed(deployment: Deployment, tmp_path: Path) -> None:
    before = deployment.obtain(deployment.good)
    state = (tmp_path / "kms" / "kms.state").read_bytes()
    assert all(secret not in state for secret in before.values())
    assert (tmp_path / "kms" / "kms.state").stat().st_mode & 0o777 == 0o600
    reopened = Kms(
        tmp_path / "kms", deployment.platform, deployment.platform.identity(b"\x4b" * 32, 1)
    )
    assert (
        KmsClient.local(reopened).obtain_secrets(deployment.platform, deployment.good, ALL)
        == before
    )


def test_rolled_back_state_is_refused(deployment: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "kms" / "kms.state"
    old = path.read_bytes()
    update = make_policy(
        deployment.platform, deployment.owner, predecessor=deployment.policy.digest
    )
    deployment.client.set_policy(sign_policy(update, deployment.owner))
    path.write_bytes(old)
    with pytest.raises(RollbackError, match=r"older than the last one written"):
        Kms(tmp_path / "kms", deployment.platform, deployment.platform.identity(b"\x4b" * 32, 1))


def test_deleted_state_is_refused(deployment: Deployment, tmp_path: Path) -> None:
    (tmp_path / "kms" / "kms.state").unlink()
    with pytest.raises(RollbackError, match=r"is missing but was written before"):
        Kms(tmp_path / "kms", deployment.platform, deployment.platform.identity(b"\x4b" * 32, 1))


def test_tampered_state_is_refused(deployment: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "kms" / "kms.state"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"sealed blob failed authentication"):
        Kms(tmp_path / "kms", deployment.platform, deployment.platform.identity(b"\x4b" * 32, 1))


def test_policy_bytes_must_be_in_normal_form(kms: Deployment) -> None:
    update = make_policy(kms.platform, kms.owner, predecessor=kms.policy.digest)
    signed = sign_policy(update, kms.owner)
    fields = decode_canonical(signed.policy)
    fields["rules"][0]["secrets"].reverse()
    unsorted = encode_canonical(fields)
    assert unsorted != signed.policy
    with pytest.raises(PolicyError, match=r"^policy is not in normal form"):
        kms.client.set_policy(replace(signed, policy=unsorted))
    kms.still_serving()
