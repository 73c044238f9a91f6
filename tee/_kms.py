"""The key management service (Palaemon / SCONE-CAS-like), as an in-process object.

It holds one signed policy and the named secrets. An enclave obtains secrets in
one round trip after a challenge:

    enclave -> KMS   challenge()                      -> nonce
    enclave -> KMS   release(quote, pk, nonce, names) -> (KMS pk, one channel record)

`release` verifies the quote against the current policy, checks that every
requested name is granted to that enclave, and returns the secrets as record 0
of an attested channel whose keys also bind the requested names. Nothing is
released to an enclave that did not attest, nor any name its policy omits.
Refusals raise and change nothing, so the KMS keeps serving.

A derived hop secret `chain/<name>/hop/<step>/<measurement hex>` is never
stored: the KMS computes it on release as HKDF(secret of `chain/<name>`,
`chain-hop/` + step (u32) + measurement), so a FaaS function whose rule lists
only its own hops never sees the chain secret nor another step's key.

State (policy, owner signature, secrets, a generation number) is one file in
the KMS state directory, sealed to the KMS's own signer identity on its
platform; the generation is mirrored in a platform monotonic counter so a
rolled-back state file is refused with `RollbackError`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import IntegrityError, PolicyError, RollbackError
from tee._channel import ChannelKey, accept_enclave
from tee._counter import MonotonicCounter
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_int, expect_map
from tee._files import ensure_private_dir, read_private_file, write_private_file
from tee._identity import EnclaveIdentity
from tee._platform import Platform, derive_key
from tee._policy import SignedPolicy, base_secret_name, check_secret_name
from tee._sealing import Sealer, SealPolicy
from tee._verifier import NonceRegistry

__all__ = [
    "Kms",
    "ReleaseRequest",
    "ReleaseResponse",
    "derive_hop_secret",
    "names_context",
    "release_transcript",
]

_STATE_FILE = "kms.state"
_STATE_CONTEXT = b"otrace/tee/v1/kms-state"
_RELEASE_LABEL = b"otrace/tee/v1/kms-release\x00"
_STATE_KEYS = frozenset({"generation", "policy", "owner", "signature", "secrets"})


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """An enclave's evidence and the secret names it asks for."""

    quote: bytes
    public_key: bytes
    nonce: bytes
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReleaseResponse:
    """The KMS's channel public key, the record holding the secrets, and the KMS's
    signature over the handshake (so an enclave that pinned the KMS key knows who answered)."""

    public_key: bytes
    record: bytes
    signature: bytes


def names_context(names: tuple[str, ...]) -> bytes:
    """Channel context binding the requested names into the session keys."""
    return encode_canonical(["otrace/tee/v1/kms-release", sorted(set(names))])


def release_transcript(request: ReleaseRequest, kms_public: bytes) -> bytes:
    """What the KMS signs in a release: the enclave's evidence, its own key and the names."""
    fields = [request.quote, request.public_key, request.nonce, kms_public]
    return _RELEASE_LABEL + encode_canonical([*fields, names_context(request.names)])


class Kms:
    """The KMS. `state_dir` is private to it; `identity` is the KMS's own enclave identity."""

    __slots__ = (
        "_counter",
        "_lock",
        "_nonces",
        "_path",
        "_policy",
        "_sealer",
        "_secrets",
        "_signing_key",
    )

    def __init__(
        self,
        state_dir: Path,
        platform: Platform,
        identity: EnclaveIdentity,
        *,
        nonce_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = ensure_private_dir(state_dir) / _STATE_FILE
        self._sealer = Sealer.for_enclave(platform, identity, SealPolicy.SIGNER)
        # Like the sealing key: only this KMS's signer on this platform can derive it.
        seed = platform.derive_key(b"kms/signing/" + identity.signer)
        self._signing_key = Ed25519PrivateKey.from_private_bytes(seed)
        # One counter per state directory, so several KMSs may share a platform.
        where = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:32]
        self._counter = MonotonicCounter(platform, f"kms-{where}")
        self._nonces = NonceRegistry(ttl=nonce_ttl, clock=clock)
        self._lock = threading.Lock()
        self._policy: SignedPolicy | None = None
        self._secrets: dict[str, bytes] = {}
        self._load()

    def __repr__(self) -> str:
        return f"Kms(state={self._path}, secrets={sorted(self._secrets)})"

    @property
    def public_key(self) -> bytes:
        """The KMS's Ed25519 key; enclaves pin it (`KmsClient(..., kms_key=...)`)."""
        return self._signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def challenge(self) -> bytes:
        """A fresh single-use nonce for the next `release`."""
        return self._nonces.issue()

    def policy(self) -> SignedPolicy | None:
        """The current signed policy (None before the first one is set)."""
        return self._policy

    def set_policy(self, update: SignedPolicy) -> bytes:
        """Install `update` if it names the current policy's hash and a current owner signed it."""
        new = update.parsed()
        with self._lock:
            current = self._policy.parsed() if self._policy is not None else None
            _check_predecessor(new.predecessor, current.digest if current else None)
            update.check_signed_by_one_of(current.owners if current else new.owners)
            secrets = dict(self._secrets)
            for name in sorted(new.secret_names() - secrets.keys()):
                secrets[name] = os.urandom(32)
            self._save(update, secrets)
            self._policy, self._secrets = update, secrets
        return new.digest

    def release(self, request: ReleaseRequest, *, key: ChannelKey | None = None) -> ReleaseResponse:
        """Verify the enclave and return the requested secrets over an attested channel."""
        names = tuple(check_secret_name(name) for name in request.names)
        with self._lock:
            if self._policy is None:
                raise PolicyError("the KMS has no policy yet; set one with `otrace kms policy set`")
            policy, secrets = self._policy.parsed(), self._secrets
        verified = policy.verifier(self._nonces).verify(
            request.quote, public_key=request.public_key, nonce=request.nonce
        )
        refused = sorted(set(names) - policy.grants(verified.identity))
        if refused:
            raise PolicyError(
                f"the policy does not release {', '.join(refused)} to enclave "
                f"{verified.identity.measurement.hex()}"
            )
        own_public, channel = accept_enclave(
            verified.public_key, verified.quote, verified.nonce, names_context(names), key=key
        )
        payload = encode_canonical({name: _released(name, secrets) for name in names})
        signature = self._signing_key.sign(release_transcript(request, own_public))
        return ReleaseResponse(own_public, channel.seal(payload), signature)

    def _load(self) -> None:
        data = read_private_file(self._path)
        if data is None:
            if self._counter.current() != 0:
                raise RollbackError(f"KMS state {self._path} is missing but was written before")
            return
        generation, policy, secrets = _decode_state(self._sealer.unseal(data, _STATE_CONTEXT))
        if generation < self._counter.current():
            raise RollbackError(f"KMS state {self._path} is older than the last one written")
        self._policy, self._secrets = policy, secrets

    def _save(self, policy: SignedPolicy, secrets: dict[str, bytes]) -> None:
        generation = self._counter.current() + 1
        state = {
            "generation": generation,
            "policy": policy.policy,
            "owner": policy.owner,
            "signature": policy.signature,
            "secrets": secrets,
        }
        write_private_file(self._path, self._sealer.seal(encode_canonical(state), _STATE_CONTEXT))
        self._counter.advance(generation)


def derive_hop_secret(chain_secret: bytes, step: int, measurement: bytes) -> bytes:
    """The secret of hop `step` into the function with `measurement`, from the chain secret."""
    label = b"chain-hop/" + step.to_bytes(4, "big") + measurement
    return derive_key(chain_secret, label)


def _released(name: str, secrets: dict[str, bytes]) -> bytes:
    base, hop = base_secret_name(name)
    if hop is None:
        return secrets[name]
    return derive_hop_secret(secrets[base], *hop)


def _check_predecessor(named: bytes | None, current: bytes | None) -> None:
    if named == current:
        return
    if current is None:
        raise PolicyError("the first policy must not name a predecessor")
    if named is None:
        raise PolicyError(
            f"policy update must name the current policy {current.hex()} as predecessor"
        )
    raise PolicyError(
        f"policy update names predecessor {named.hex()} but the current policy is {current.hex()}"
    )


def _decode_state(data: bytes) -> tuple[int, SignedPolicy, dict[str, bytes]]:
    try:
        fields = expect_map(decode_canonical(data), _STATE_KEYS)
        generation = expect_int(fields["generation"], "generation")
        policy = SignedPolicy(
            *(expect_bytes(fields[key], key) for key in ("policy", "owner", "signature"))
        )
        if not isinstance(fields["secrets"], dict):
            raise ValueError("secrets must be a map")
        secrets = {
            check_secret_name(name): expect_bytes(value, "secret", 32)
            for name, value in fields["secrets"].items()
        }
    except (ValueError, PolicyError) as exc:
        raise IntegrityError(f"KMS state is malformed: {exc}") from None
    return generation, policy, secrets
