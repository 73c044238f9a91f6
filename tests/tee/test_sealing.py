"""Sealing: round-trips, and refusal of tampered blobs and of other identities."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otrace.errors import IntegrityError
from tee import EnclaveIdentity, Platform, Sealer, SealPolicy, StateSealer
from tests.tee.conftest import MEASUREMENT, OTHER_MEASUREMENT

PLATFORM = Platform.from_secrets(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
IDENTITY = PLATFORM.identity(MEASUREMENT, 1)
SEALER = Sealer.for_enclave(PLATFORM, IDENTITY)


@given(st.binary(max_size=4096), st.binary(max_size=64))
def test_round_trip(plaintext: bytes, context: bytes) -> None:
    assert SEALER.unseal(SEALER.seal(plaintext, context), context) == plaintext


@given(st.binary(max_size=1024))
def test_key_sealer_round_trip(plaintext: bytes) -> None:
    sealer = Sealer.from_key(b"\x07" * 32)
    assert sealer.unseal(sealer.seal(plaintext, b"oram"), b"oram") == plaintext


def test_satisfies_the_oram_state_sealer_protocol() -> None:
    state_sealer: StateSealer = Sealer.from_key(b"\x07" * 32)
    assert state_sealer.unseal(state_sealer.seal(b"state", b"ctx"), b"ctx") == b"state"


def test_seal_with_nonce_is_deterministic_vector() -> None:
    blob = SEALER.seal_with_nonce(b"hello", b"ctx", bytes(12))
    assert blob == SEALER.seal_with_nonce(b"hello", b"ctx", bytes(12))
    assert blob[:2] == bytes([1, SealPolicy.MEASUREMENT]) and blob[2:34] == MEASUREMENT
    assert len(blob) == 34 + 12 + 5 + 16


def test_every_tampered_byte_is_detected() -> None:
    blob = SEALER.seal(b"secret state", b"ctx")
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(IntegrityError, match=r"sealed blob"):
            SEALER.unseal(bytes(tampered), b"ctx")


def test_tampered_ciphertext_message() -> None:
    blob = bytearray(SEALER.seal(b"secret state"))
    blob[-1] ^= 0x80
    with pytest.raises(IntegrityError, match=r"^sealed blob failed authentication"):
        SEALER.unseal(bytes(blob))


def test_wrong_context_is_refused() -> None:
    with pytest.raises(IntegrityError, match=r"failed authentication"):
        SEALER.unseal(SEALER.seal(b"x", b"tree-1"), b"tree-2")


def test_truncated_blob_is_refused() -> None:
    with pytest.raises(IntegrityError, match=r"^sealed blob is truncated$"):
        SEALER.unseal(SEALER.seal(b"x")[:40])


def test_other_measurement_cannot_unseal() -> None:
    other = Sealer.for_enclave(PLATFORM, PLATFORM.identity(OTHER_MEASUREMENT, 1))
    with pytest.raises(IntegrityError, match=r"bound to a different policy"):
        other.unseal(SEALER.seal(b"secret"))


def test_forged_header_under_other_measurement_still_fails() -> None:
    # An attacker relabels a blob with the other enclave's measurement: the key differs.
    other = Sealer.for_enclave(PLATFORM, PLATFORM.identity(OTHER_MEASUREMENT, 1))
    blob = SEALER.seal(b"secret")
    relabelled = blob[:2] + OTHER_MEASUREMENT + blob[34:]
    with pytest.raises(IntegrityError, match=r"failed authentication"):
        other.unseal(relabelled)


def test_other_platform_cannot_unseal() -> None:
    elsewhere = Platform.from_secrets(b"\x09" * 32, b"\x02" * 32, b"\x03" * 32)
    with pytest.raises(IntegrityError, match=r"failed authentication"):
        Sealer.for_enclave(elsewhere, IDENTITY).unseal(SEALER.seal(b"secret"))


def test_signer_policy_survives_a_code_upgrade() -> None:
    upgraded = EnclaveIdentity(OTHER_MEASUREMENT, IDENTITY.signer, 2)
    blob = Sealer.for_enclave(PLATFORM, IDENTITY, SealPolicy.SIGNER).seal(b"state")
    assert Sealer.for_enclave(PLATFORM, upgraded, SealPolicy.SIGNER).unseal(blob) == b"state"


def test_repr_shows_no_key() -> None:
    assert "07070707" not in repr(Sealer.from_key(b"\x07" * 32))
