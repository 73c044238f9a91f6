"""Attested span producers: obtaining a producer certificate from the producer CA.

A function (or the gateway) makes a fresh P-256 key and a CSR, has its
platform quote SHA-256 of the key's SubjectPublicKeyInfo for the CA's nonce,
and receives a short-lived client certificate (`tee.ProducerCa`). Its OTLP
exporter then presents that certificate; the private key never leaves memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from otrace.errors import InvalidRequest
from otrace.faas._transport import Handler, Transport
from tee import EnclaveIdentity, Platform, ProducerCa, producer_key_digest, report_data_for
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_map

__all__ = [
    "ProducerCaService",
    "ProducerCredentials",
    "RemoteProducerCa",
    "obtain_producer_credentials",
    "producer_ca_methods",
]


class ProducerCaService(Protocol):
    """What a producer needs of the CA: `tee.ProducerCa` itself or `RemoteProducerCa`."""

    def challenge(self) -> bytes: ...

    def issue(self, quote: bytes, csr_pem: bytes, nonce: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ProducerCredentials:
    """A producer certificate and its private key (PEM; the key is never printed)."""

    certificate_pem: bytes
    key_pem: bytes = field(repr=False)

    def channel_credentials(self, server_ca_pem: bytes) -> grpc.ChannelCredentials:
        """gRPC mTLS credentials for an OTLP exporter."""
        return grpc.ssl_channel_credentials(
            root_certificates=server_ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.certificate_pem,
        )


def obtain_producer_credentials(
    ca: ProducerCaService, platform: Platform, identity: EnclaveIdentity, name: str
) -> ProducerCredentials:
    """Attest `identity` to the producer CA and return a client certificate for `name`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    nonce = ca.challenge()
    quote = platform.quote(identity, report_data_for(producer_key_digest(key.public_key()), nonce))
    certificate = ca.issue(quote.to_bytes(), csr.public_bytes(serialization.Encoding.PEM), nonce)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ProducerCredentials(certificate, key_pem)


def producer_ca_methods(ca: ProducerCa) -> dict[str, Handler]:
    """The CA's byte-level methods, to serve next to a KMS (`serve_bytes`)."""

    def challenge(request: bytes) -> bytes:
        return encode_canonical({"nonce": ca.challenge()})

    def issue(request: bytes) -> bytes:
        try:
            fields = expect_map(decode_canonical(request), frozenset({"quote", "csr", "nonce"}))
            quote, csr, nonce = (expect_bytes(fields[k], k) for k in ("quote", "csr", "nonce"))
        except ValueError as exc:
            raise InvalidRequest(f"malformed producer CA request: {exc}") from None
        return encode_canonical({"certificate": ca.issue(quote, csr, nonce)})

    def certificate(request: bytes) -> bytes:
        return encode_canonical({"certificate": ca.certificate_pem})

    return {"CaChallenge": challenge, "CaIssue": issue, "CaCertificate": certificate}


class RemoteProducerCa:
    """The producer CA in another process, reached over a `Transport`."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def challenge(self) -> bytes:
        return self._field(self._transport.call(encode_canonical({}), "CaChallenge"), "nonce")

    def issue(self, quote: bytes, csr_pem: bytes, nonce: bytes) -> bytes:
        request = encode_canonical({"quote": quote, "csr": csr_pem, "nonce": nonce})
        return self._field(self._transport.call(request, "CaIssue"), "certificate")

    @staticmethod
    def _field(data: bytes, name: str) -> bytes:
        try:
            return expect_bytes(expect_map(decode_canonical(data), frozenset({name}))[name], name)
        except ValueError as exc:
            raise InvalidRequest(f"malformed producer CA answer: {exc}") from None
