"""Quotes: the platform's signed statement of which enclave holds which key.

Wire form (canonical CBOR array):

    [1, measurement(32), signer(32), security_version, simulated, report_data(64), signature(64)]

The signature is Ed25519 by the platform attestation key over the domain label
`otrace/tee/v1/quote` followed by the canonical CBOR of the first six elements.
Report data is SHA-512 over a label, the enclave's ephemeral X25519 public key
and the verifier's nonce, so a quote is bound to one key exchange and one
challenge and cannot be replayed into another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from otrace.errors import AttestationError, ConfigError
from tee._encoding import (
    decode_canonical,
    encode_canonical,
    expect_bytes,
    expect_int,
)
from tee._identity import EnclaveIdentity

__all__ = ["QUOTE_VERSION", "Quote", "quote_body", "report_data_for"]

QUOTE_VERSION = 1
_QUOTE_LABEL = b"otrace/tee/v1/quote\x00"
_REPORT_LABEL = b"otrace/tee/v1/report-data\x00"


@dataclass(frozen=True, slots=True)
class Quote:
    """A signed enclave identity plus 64 bytes of report data. Parse with `from_bytes`."""

    identity: EnclaveIdentity
    report_data: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        """The canonical wire form."""
        return encode_canonical([*_fields(self.identity, self.report_data), self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        """Parse a quote; truncated or garbled input raises `AttestationError`.

        Parsing checks only the shape; nothing here says the quote is genuine.
        """
        try:
            fields = decode_canonical(data)
            if not isinstance(fields, list) or len(fields) != 7:
                raise ValueError("expected a 7-element array")
            if expect_int(fields[0], "version") != QUOTE_VERSION:
                raise ValueError(f"unsupported quote version {fields[0]}")
            if not isinstance(fields[4], bool):
                raise ValueError("simulated flag must be a boolean")
            identity = EnclaveIdentity(
                measurement=expect_bytes(fields[1], "measurement", 32),
                signer=expect_bytes(fields[2], "signer", 32),
                security_version=expect_int(fields[3], "security version"),
                simulated=fields[4],
            )
            report_data = expect_bytes(fields[5], "report data", 64)
            signature = expect_bytes(fields[6], "signature", 64)
        except (ValueError, ConfigError) as exc:
            raise AttestationError(f"quote is malformed or truncated: {exc}") from None
        return cls(identity, report_data, signature)

    @property
    def signed_body(self) -> bytes:
        """The bytes the platform attestation key signed."""
        return quote_body(self.identity, self.report_data)


def quote_body(identity: EnclaveIdentity, report_data: bytes) -> bytes:
    """The domain-separated bytes a platform signs for `identity` and `report_data`."""
    if len(report_data) != 64:
        raise ConfigError("report data must be 64 bytes")
    return _QUOTE_LABEL + encode_canonical(_fields(identity, report_data))


def report_data_for(public_key: bytes, nonce: bytes) -> bytes:
    """SHA-512 binding an enclave's ephemeral public key to a verifier's nonce."""
    digest = hashlib.sha512(_REPORT_LABEL)
    for item in (public_key, nonce):
        digest.update(len(item).to_bytes(2, "big"))
        digest.update(item)
    return digest.digest()


def _fields(identity: EnclaveIdentity, report_data: bytes) -> list[object]:
    return [
        QUOTE_VERSION,
        identity.measurement,
        identity.signer,
        identity.security_version,
        identity.simulated,
        report_data,
    ]
