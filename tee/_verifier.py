"""Quote verification: signature, allow-list, security version, simulation flag, nonce.

Checks run in a fixed order and each refusal has its own message, so an
operator can tell a forged quote from a stale one:

1. shape (`Quote.from_bytes`), 2. signature by a trusted platform key,
3. simulated flag, 4. nonce issued here, unused and unexpired (consumed now),
5. report data binds the channel key and nonce, 6. measurement or signer
allow-listed, 7. security version at least the minimum.

A nonce is consumed once a genuinely signed quote names it, whatever the later
checks say, so every nonce supports at most one verification attempt.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from otrace.errors import AttestationError, ConfigError
from tee._identity import EnclaveIdentity
from tee._quote import Quote, report_data_for

__all__ = ["NONCE_SIZE", "NonceRegistry", "VerifiedEnclave", "Verifier"]

NONCE_SIZE = 32
_MAX_OUTSTANDING = 65536

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class VerifiedEnclave:
    """An enclave whose quote passed every check of a `Verifier`."""

    identity: EnclaveIdentity
    public_key: bytes
    quote: bytes
    nonce: bytes


class NonceRegistry:
    """Single-use challenge nonces with expiry; thread-safe."""

    __slots__ = ("_clock", "_lock", "_outstanding", "_ttl")

    def __init__(self, *, ttl: float = 60.0, clock: Clock = time.monotonic) -> None:
        if ttl <= 0:
            raise ConfigError("nonce ttl must be positive")
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._outstanding: dict[bytes, float] = {}

    def issue(self) -> bytes:
        """A fresh random nonce, valid once for `ttl` seconds."""
        return self.issue_nonce(os.urandom(NONCE_SIZE))

    def issue_nonce(self, nonce: bytes) -> bytes:
        """Register a caller-chosen nonce (deterministic twin of `issue`)."""
        if len(nonce) != NONCE_SIZE:
            raise ConfigError(f"a nonce has {NONCE_SIZE} bytes")
        with self._lock:
            now = self._clock()
            self._forget_long_expired(now)
            if len(self._outstanding) >= _MAX_OUTSTANDING:
                oldest = min(self._outstanding, key=self._outstanding.__getitem__)
                del self._outstanding[oldest]
            self._outstanding[nonce] = now + self._ttl
        return nonce

    def consume(self, nonce: bytes) -> None:
        """Use `nonce` up; raise `AttestationError` if unknown, already used or expired."""
        with self._lock:
            expiry = self._outstanding.pop(nonce, None)
            now = self._clock()
        if expiry is None:
            raise AttestationError(
                "nonce was not issued by this verifier or was already used (replayed quote)"
            )
        if now > expiry:
            raise AttestationError(f"nonce is stale: it expired {now - expiry:.1f}s ago")

    def _forget_long_expired(self, now: float) -> None:
        # Expired nonces are kept one extra ttl so a late quote is told "stale", not "unknown".
        for nonce in [n for n, expiry in self._outstanding.items() if now > expiry + self._ttl]:
            del self._outstanding[nonce]


class Verifier:
    """Decides whether a quote comes from an acceptable enclave. There is no accept-all mode."""

    __slots__ = (
        "_allow_simulated",
        "_measurements",
        "_min_svn",
        "_nonces",
        "_platform_keys",
        "_signers",
    )

    def __init__(
        self,
        *,
        trusted_platform_keys: Iterable[bytes],
        allowed_measurements: Iterable[bytes] = (),
        allowed_signers: Iterable[bytes] = (),
        min_security_version: int = 0,
        allow_simulated: bool = False,
        nonce_ttl: float = 60.0,
        clock: Clock = time.monotonic,
        nonces: NonceRegistry | None = None,
    ) -> None:
        self._platform_keys = tuple(_load_platform_key(key) for key in trusted_platform_keys)
        self._measurements = frozenset(allowed_measurements)
        self._signers = frozenset(allowed_signers)
        if not self._platform_keys:
            raise ConfigError("a verifier needs at least one trusted platform key")
        if not self._measurements and not self._signers:
            raise ConfigError("a verifier needs at least one allowed measurement or signer")
        self._min_svn = min_security_version
        self._allow_simulated = allow_simulated
        self._nonces = nonces if nonces is not None else NonceRegistry(ttl=nonce_ttl, clock=clock)

    def challenge(self) -> bytes:
        """A fresh nonce the enclave must bind into its quote's report data."""
        return self._nonces.issue()

    def challenge_with(self, nonce: bytes) -> bytes:
        """Deterministic twin of `challenge`: register a caller-chosen nonce."""
        return self._nonces.issue_nonce(nonce)

    def verify(self, quote_bytes: bytes, *, public_key: bytes, nonce: bytes) -> VerifiedEnclave:
        """Run every check; return the verified enclave or raise `AttestationError`."""
        quote = Quote.from_bytes(quote_bytes)
        self._check_signature(quote)
        if quote.identity.simulated and not self._allow_simulated:
            raise AttestationError(
                "quote comes from a simulated enclave and this verifier does not allow simulation"
            )
        self._nonces.consume(nonce)
        if not hmac.compare_digest(quote.report_data, report_data_for(public_key, nonce)):
            raise AttestationError("quote report data does not bind this public key and nonce")
        self._check_identity(quote.identity)
        return VerifiedEnclave(quote.identity, public_key, quote_bytes, nonce)

    def verify_report(self, quote_bytes: bytes, report_data: bytes) -> EnclaveIdentity:
        """Check a quote over a public statement rather than a key exchange.

        Checks 1-3, 6 and 7 of the module docstring, then that the report data is
        exactly `report_data`. No nonce: freshness must come from what the report
        data binds (the SSLE shuffle binds its term). Raises `AttestationError`.
        """
        quote = Quote.from_bytes(quote_bytes)
        self._check_signature(quote)
        if quote.identity.simulated and not self._allow_simulated:
            raise AttestationError(
                "quote comes from a simulated enclave and this verifier does not allow simulation"
            )
        if not hmac.compare_digest(quote.report_data, report_data):
            raise AttestationError("quote report data does not bind this statement")
        self._check_identity(quote.identity)
        return quote.identity

    def _check_signature(self, quote: Quote) -> None:
        body = quote.signed_body
        for key in self._platform_keys:
            try:
                key.verify(quote.signature, body)
            except InvalidSignature:
                continue
            return
        raise AttestationError("quote signature does not verify under any trusted platform key")

    def _check_identity(self, identity: EnclaveIdentity) -> None:
        measurement_ok = identity.measurement in self._measurements
        signer_ok = identity.signer in self._signers
        if not (measurement_ok or signer_ok):
            raise AttestationError(
                _not_allow_listed(identity, bool(self._measurements), bool(self._signers))
            )
        if identity.security_version < self._min_svn:
            raise AttestationError(
                f"enclave security version {identity.security_version} is below "
                f"the minimum {self._min_svn}"
            )


def _not_allow_listed(identity: EnclaveIdentity, by_measurement: bool, by_signer: bool) -> str:
    measurement = f"measurement {identity.measurement.hex()}"
    signer = f"signer {identity.signer.hex()}"
    if by_measurement and by_signer:
        return f"enclave is not allow-listed: neither {measurement} nor {signer} is allowed"
    if by_measurement:
        return f"enclave {measurement} is not allow-listed"
    return f"enclave {signer} is not allow-listed"


def _load_platform_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise ConfigError("a trusted platform key is a raw 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)
