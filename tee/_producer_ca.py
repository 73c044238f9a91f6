"""The producer CA: short-lived X.509 client certificates for attested span producers.

With `otrace serve --require-attested-producers` the OTLP receivers demand a
TLS client certificate issued by this CA, so only attested code can add spans
(span injection is the main attack on searchable encryption). The CA issues a
certificate only to an enclave that

1. proves possession of the certificate key (a signed CSR),
2. attests with a quote whose report data binds SHA-256 of that key's DER
   SubjectPublicKeyInfo to a fresh, single-use nonce of this CA, and
3. is admitted by the current KMS policy (some rule grants it a secret).

    producer -> CA   challenge()                 -> nonce
    producer -> CA   issue(quote, csr, nonce)    -> certificate (PEM, `lifetime` seconds)

The CA key stays on the KMS side: an ECDSA P-256 key derived from the platform
root (labels `producer-ca/0` and `producer-ca/1`). Its self-signed certificate
is created once and kept as `producer-ca.pem` in the platform directory, where
a node on the same platform reads it as its client CA.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from otrace.errors import AttestationError, ConfigError, PolicyError
from tee._files import create_private_file_once, read_private_file
from tee._platform import Platform
from tee._policy import KmsPolicy
from tee._verifier import NonceRegistry

__all__ = ["CERTIFICATE_FILE", "MEASUREMENT_URI", "ProducerCa", "producer_key_digest"]

CERTIFICATE_FILE = "producer-ca.pem"
#: Issued certificates name the producer's measurement as SAN URI `<prefix><hex>`.
MEASUREMENT_URI = "urn:otrace:measurement:"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otrace producer CA")])
_CLOCK_SKEW = datetime.timedelta(minutes=1)

PolicySource = Callable[[], KmsPolicy | None]


def producer_key_digest(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """What a producer's quote binds: SHA-256 of the certificate key's DER SPKI."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


class ProducerCa:
    """Issues producer certificates to enclaves `policy()` admits. See the module docstring."""

    __slots__ = ("_certificate", "_clock", "_key", "_lifetime", "_nonces", "_policy")

    def __init__(
        self,
        platform: Platform,
        policy: PolicySource,
        *,
        lifetime: float = 3600.0,
        nonce_ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime <= 0:
            raise ConfigError("a producer certificate lifetime must be positive")
        self._key = _ca_key(platform)
        self._certificate = load_or_create_certificate(platform)
        self._policy = policy
        self._lifetime = lifetime
        self._clock = clock
        self._nonces = NonceRegistry(ttl=nonce_ttl)

    def __repr__(self) -> str:
        return f"ProducerCa(subject={self._certificate.subject.rfc4514_string()!r})"

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate the collector trusts for client certificates."""
        return self._certificate.public_bytes(Encoding.PEM)

    @staticmethod
    def certificate_file(platform: Platform) -> Path:
        """The CA certificate's file in `platform`'s directory (created on first use)."""
        load_or_create_certificate(platform)
        return platform.directory / CERTIFICATE_FILE

    def challenge(self) -> bytes:
        """A fresh single-use nonce for the next `issue`."""
        return self._nonces.issue()

    def issue(self, quote: bytes, csr_pem: bytes, nonce: bytes) -> bytes:
        """A client certificate (PEM) for the CSR's key, if the quote admits its enclave."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise AttestationError("producer CSR is malformed") from None
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not csr.is_signature_valid:
            raise AttestationError("producer CSR needs an EC key and a valid self-signature")
        policy = self._policy()
        if policy is None:
            raise PolicyError("the KMS has no policy yet, so no producer is admitted")
        verified = policy.verifier(self._nonces).verify(
            quote, public_key=producer_key_digest(key), nonce=nonce
        )
        if not policy.grants(verified.identity):
            raise PolicyError(
                f"enclave {verified.identity.measurement.hex()} is not an admitted producer "
                "(the KMS policy grants it nothing)"
            )
        return self._sign(csr, key, verified.identity.measurement)

    def _sign(
        self,
        csr: x509.CertificateSigningRequest,
        key: ec.EllipticCurvePublicKey,
        measurement: bytes,
    ) -> bytes:
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else "otrace producer"
        uri = x509.UniformResourceIdentifier(MEASUREMENT_URI + measurement.hex())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._certificate.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(seconds=self._lifetime))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([uri]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(Encoding.PEM)


def load_or_create_certificate(platform: Platform) -> x509.Certificate:
    """The CA certificate of `platform`: read from its directory or created there once."""
    key = _ca_key(platform)
    try:
        directory: Path | None = platform.directory
    except ConfigError:
        directory = None  # a platform from secrets: an in-memory certificate
    if directory is None:
        return _self_signed(key)
    path = directory / CERTIFICATE_FILE
    data = read_private_file(path)
    if data is None:
        data = create_private_file_once(path, _self_signed(key).public_bytes(Encoding.PEM))
    certificate = x509.load_pem_x509_certificate(data)
    if certificate.public_key() != key.public_key():
        raise ConfigError(f"{path} is not the producer CA certificate of this platform")
    return certificate


def _ca_key(platform: Platform) -> ec.EllipticCurvePrivateKey:
    # 64 bytes reduced mod the group order: a uniform scalar, stable per platform.
    wide = platform.derive_key(b"producer-ca/0") + platform.derive_key(b"producer-ca/1")
    scalar = int.from_bytes(wide, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_CA_NAME)
        .issuer_name(_CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
