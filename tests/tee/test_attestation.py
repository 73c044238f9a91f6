"""Quotes and the verifier, from the attacker's side: every refusal has its own message."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from otrace.errors import AttestationError, ConfigError
from tee import ChannelKey, EnclaveIdentity, Platform, Quote, Verifier, open_channel
from tests.tee.conftest import MEASUREMENT, OTHER_MEASUREMENT, FakeClock

MakeVerifier = Callable[..., Verifier]


def _evidence(platform: Platform, identity: EnclaveIdentity, nonce: bytes) -> tuple[bytes, bytes]:
    hello = open_channel(platform, identity, nonce)
    return hello.quote, hello.public_key


def test_genuine_quote_verifies(platform, identity, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, identity, nonce)
    verified = verifier.verify(quote, public_key=public_key, nonce=nonce)
    assert verified.identity == identity
    assert verified.identity.simulated is True
    assert Quote.from_bytes(quote).to_bytes() == quote


def test_deterministic_quote_vector() -> None:
    platform = Platform.from_secrets(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    identity = platform.identity(MEASUREMENT, 1)
    key = ChannelKey.from_private_bytes(b"\x05" * 32)
    first = open_channel(platform, identity, b"\x06" * 32, key=key)
    second = open_channel(platform, identity, b"\x06" * 32, key=key)
    assert first.quote == second.quote  # Ed25519 is deterministic


def test_forged_signature_is_refused(platform, identity, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, identity, nonce)
    forged = quote[:-64] + Ed25519PrivateKey.generate().sign(Quote.from_bytes(quote).signed_body)
    with pytest.raises(
        AttestationError, match=r"^quote signature does not verify under any trusted platform key$"
    ):
        verifier.verify(forged, public_key=public_key, nonce=nonce)
    # The nonce was not burnt by the forgery: the genuine quote still verifies.
    assert verifier.verify(quote, public_key=public_key, nonce=nonce).identity == identity


def test_quote_from_untrusted_platform_is_refused(tmp_path, identity, make_verifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    rogue = Platform.open(tmp_path / "rogue")
    quote, public_key = _evidence(rogue, identity, nonce)
    with pytest.raises(AttestationError, match=r"does not verify under any trusted platform key"):
        verifier.verify(quote, public_key=public_key, nonce=nonce)


def test_edited_identity_breaks_the_signature(platform, identity, make_verifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, platform.identity(OTHER_MEASUREMENT, 3), nonce)
    edited = quote.replace(OTHER_MEASUREMENT, MEASUREMENT)
    with pytest.raises(AttestationError, match=r"quote signature does not verify"):
        verifier.verify(edited, public_key=public_key, nonce=nonce)


def test_replayed_quote_is_refused(platform, identity, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, identity, nonce)
    verifier.verify(quote, public_key=public_key, nonce=nonce)
    with pytest.raises(
        AttestationError,
        match=re.escape(
            "nonce was not issued by this verifier or was already used (replayed quote)"
        ),
    ):
        verifier.verify(quote, public_key=public_key, nonce=nonce)


def test_nonce_never_issued_is_refused(platform, identity, make_verifier) -> None:
    quote, public_key = _evidence(platform, identity, b"\x00" * 32)
    with pytest.raises(AttestationError, match=r"nonce was not issued by this verifier"):
        make_verifier().verify(quote, public_key=public_key, nonce=b"\x00" * 32)


def test_stale_nonce_is_refused(platform, identity, make_verifier, clock: FakeClock) -> None:
    verifier = make_verifier(nonce_ttl=30.0)
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, identity, nonce)
    clock.now += 31.0
    with pytest.raises(AttestationError, match=r"^nonce is stale: it expired 1\.0s ago$"):
        verifier.verify(quote, public_key=public_key, nonce=nonce)


def test_quote_for_another_key_is_refused(platform, identity, make_verifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, _ = _evidence(platform, identity, nonce)
    attacker_key = ChannelKey.generate().public_bytes
    with pytest.raises(
        AttestationError, match=r"^quote report data does not bind this public key and nonce$"
    ):
        verifier.verify(quote, public_key=attacker_key, nonce=nonce)


def test_wrong_measurement_is_refused(platform, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, platform.identity(OTHER_MEASUREMENT, 3), nonce)
    expected = f"^enclave measurement {OTHER_MEASUREMENT.hex()} is not allow-listed$"
    with pytest.raises(AttestationError, match=expected):
        verifier.verify(quote, public_key=public_key, nonce=nonce)


def test_wrong_signer_is_refused(platform, tmp_path, make_verifier: MakeVerifier) -> None:
    other_author = Platform.open(tmp_path / "author").identity(MEASUREMENT, 3)
    verifier = make_verifier(
        allowed_measurements=[], allowed_signers=[platform.identity(MEASUREMENT, 3).signer]
    )
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, other_author, nonce)
    expected = f"^enclave signer {other_author.signer.hex()} is not allow-listed$"
    with pytest.raises(AttestationError, match=expected):
        verifier.verify(quote, public_key=public_key, nonce=nonce)


def test_allow_listed_signer_is_accepted(platform, identity, make_verifier) -> None:
    verifier = make_verifier(allowed_measurements=[], allowed_signers=[identity.signer])
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, platform.identity(OTHER_MEASUREMENT, 3), nonce)
    assert verifier.verify(quote, public_key=public_key, nonce=nonce).identity.signer


def test_low_security_version_is_refused(platform, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(min_security_version=4)
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, platform.identity(MEASUREMENT, 3), nonce)
    with pytest.raises(
        AttestationError, match=r"^enclave security version 3 is below the minimum 4$"
    ):
        verifier.verify(quote, public_key=public_key, nonce=nonce)


def test_simulated_quote_is_refused_when_strict(platform, identity, make_verifier) -> None:
    verifier = make_verifier(allow_simulated=False)
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, identity, nonce)
    with pytest.raises(
        AttestationError,
        match=r"^quote comes from a simulated enclave and this verifier does not allow simulation$",
    ):
        verifier.verify(quote, public_key=public_key, nonce=nonce)


@pytest.mark.parametrize("cut", [0, 1, 10, 100, 200])
def test_truncated_quote_is_refused(platform, identity, make_verifier, cut: int) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, identity, nonce)
    with pytest.raises(AttestationError, match=r"^quote is malformed or truncated: "):
        verifier.verify(quote[:cut], public_key=public_key, nonce=nonce)


@pytest.mark.parametrize(
    "garbage", [b"\xff" * 40, b"\x80", b"not a quote at all", b"\x87\x01" + b"\x00" * 6]
)
def test_garbled_quote_is_refused(garbage: bytes, make_verifier) -> None:
    with pytest.raises(AttestationError, match=r"^quote is malformed or truncated: "):
        make_verifier().verify(garbage, public_key=b"\x00" * 32, nonce=b"\x00" * 32)


def test_trailing_bytes_are_refused(platform, identity, make_verifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    quote, public_key = _evidence(platform, identity, nonce)
    with pytest.raises(AttestationError, match=r"not canonical CBOR"):
        verifier.verify(quote + b"\x00", public_key=public_key, nonce=nonce)


def test_there_is_no_accept_all_verifier(platform) -> None:
    with pytest.raises(ConfigError, match=r"at least one allowed measurement or signer"):
        Verifier(trusted_platform_keys=[platform.attestation_public_key])
    with pytest.raises(ConfigError, match=r"at least one trusted platform key"):
        Verifier(trusted_platform_keys=[], allowed_measurements=[MEASUREMENT])
