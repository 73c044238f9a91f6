"""Sealing: AES-256-GCM under keys only a given enclave on a given platform can derive.

Sealed blob layout:

    version (1) | policy kind (1) | policy id (32) | nonce (12) | ciphertext + tag

Policy kinds: 1 = measurement (key from HKDF(root, "seal/measurement" + measurement),
like SGX MRENCLAVE), 2 = signer (key from HKDF(root, "seal/signer" + signer id),
like MRSIGNER: survives code upgrades by the same author), 3 = raw key (a key the
enclave holds, e.g. the KMS-released `state_key`; the policy id is a key
fingerprint). The 34 header bytes plus the caller's context are the associated
data, so flipping any byte, or unsealing with another context, fails.
"""

from __future__ import annotations

import enum
import os
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from otrace.errors import ConfigError, IntegrityError
from tee._identity import EnclaveIdentity
from tee._platform import Platform, derive_key

__all__ = ["SEAL_VERSION", "SealPolicy", "Sealer", "StateSealer"]

SEAL_VERSION = 1
_NONCE_SIZE = 12
_HEADER_SIZE = 2 + 32
_MIN_BLOB = _HEADER_SIZE + _NONCE_SIZE + 16


class SealPolicy(enum.IntEnum):
    """Which identity a sealed blob is bound to."""

    MEASUREMENT = 1
    SIGNER = 2
    KEY = 3


class StateSealer(Protocol):
    """What the ORAM needs to seal its client state (same Protocol on its side)."""

    def seal(self, plaintext: bytes, context: bytes) -> bytes: ...

    def unseal(self, blob: bytes, context: bytes) -> bytes: ...


class Sealer:
    """Seals and unseals under one policy; satisfies `StateSealer`.

    Build it with `for_enclave` (platform-derived keys) or `from_key` (a key the
    enclave obtained, such as the KMS `state_key`).
    """

    __slots__ = ("_aead", "_header")

    def __init__(self, key: bytes, kind: SealPolicy, policy_id: bytes) -> None:
        if len(key) != 32 or len(policy_id) != 32:
            raise ConfigError("a sealing key and policy id have 32 bytes each")
        self._aead = AESGCM(key)
        self._header = bytes([SEAL_VERSION, kind]) + policy_id

    @classmethod
    def for_enclave(
        cls,
        platform: Platform,
        identity: EnclaveIdentity,
        policy: SealPolicy = SealPolicy.MEASUREMENT,
    ) -> Sealer:
        """A sealer whose key only `identity` (per `policy`) on `platform` can derive."""
        if policy is SealPolicy.MEASUREMENT:
            policy_id, label = identity.measurement, b"seal/measurement"
        elif policy is SealPolicy.SIGNER:
            policy_id, label = identity.signer, b"seal/signer"
        else:
            raise ConfigError("for_enclave seals to a measurement or a signer; use from_key")
        return cls(platform.derive_key(label + policy_id), policy, policy_id)

    @classmethod
    def from_key(cls, key: bytes) -> Sealer:
        """A sealer over a 32-byte key the enclave holds (e.g. the KMS-released `state_key`)."""
        if len(key) != 32:
            raise ConfigError("a sealing key has 32 bytes")
        return cls(derive_key(key, b"seal/key"), SealPolicy.KEY, derive_key(key, b"seal/key-id"))

    def __repr__(self) -> str:
        kind = SealPolicy(self._header[1]).name.lower()
        return f"Sealer(policy={kind}, policy_id={self._header[2:].hex()[:16]}...)"

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        """Encrypt `plaintext` bound to this policy and `context`, with a random nonce."""
        return self.seal_with_nonce(plaintext, context, os.urandom(_NONCE_SIZE))

    def seal_with_nonce(self, plaintext: bytes, context: bytes, nonce: bytes) -> bytes:
        """Deterministic twin of `seal`; never reuse a nonce under one key outside tests."""
        if len(nonce) != _NONCE_SIZE:
            raise ConfigError(f"a sealing nonce has {_NONCE_SIZE} bytes")
        ciphertext = self._aead.encrypt(nonce, plaintext, self._associated(self._header, context))
        return self._header + nonce + ciphertext

    def unseal(self, blob: bytes, context: bytes = b"") -> bytes:
        """Decrypt a blob sealed under this policy and `context`, else `IntegrityError`."""
        if len(blob) < _MIN_BLOB:
            raise IntegrityError("sealed blob is truncated")
        header = blob[:_HEADER_SIZE]
        if header[0] != SEAL_VERSION:
            raise IntegrityError(f"sealed blob has unsupported version {header[0]}")
        if header != self._header:
            raise IntegrityError("sealed blob is bound to a different policy than this sealer's")
        nonce = blob[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE]
        try:
            return self._aead.decrypt(
                nonce, blob[_HEADER_SIZE + _NONCE_SIZE :], self._associated(header, context)
            )
        except InvalidTag:
            raise IntegrityError(
                "sealed blob failed authentication (tampered or wrong context)"
            ) from None

    @staticmethod
    def _associated(header: bytes, context: bytes) -> bytes:
        return header + len(context).to_bytes(8, "big") + context
