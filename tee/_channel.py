"""The attested channel: X25519 + HKDF-SHA256 + AES-256-GCM bound to a quote.

Handshake (the enclave is the initiator, the verifier the responder):

    verifier -> enclave   nonce
    enclave  -> verifier  quote(report_data = SHA-512(enclave_pk, nonce)), enclave_pk
    verifier -> enclave   verifier_pk            (only after the quote verified)

Both sides compute the X25519 shared secret and run HKDF with salt =
SHA-256(canonical CBOR [label, enclave_pk, verifier_pk, quote, nonce, context])
and info `otrace/tee/v1/channel/<direction>`, one 32-byte key per direction.
`context` lets an application bind its own request (e.g. the secret names a KMS
client asked for) into the keys.

Records: 8-byte big-endian sequence number, then AES-GCM ciphertext. The nonce
is 4 zero bytes plus the sequence number; the associated data is a label and
the sequence number. The receiver accepts exactly the next sequence number.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import AttestationError, ChannelError
from tee._encoding import encode_canonical
from tee._identity import EnclaveIdentity
from tee._platform import Platform, derive_key
from tee._quote import report_data_for

__all__ = ["AttestedChannel", "ChannelKey", "EnclaveHello", "accept_enclave", "open_channel"]

_TRANSCRIPT_LABEL = "otrace/tee/v1/channel-transcript"
_RECORD_AD = b"otrace/tee/v1/record\x00"
_TO_VERIFIER = b"channel/enclave-to-verifier"
_TO_ENCLAVE = b"channel/verifier-to-enclave"
_SEQ_SIZE = 8
_TAG_SIZE = 16


class ChannelKey:
    """An ephemeral X25519 key pair; `from_private_bytes` is the twin of `generate`."""

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> ChannelKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> ChannelKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def __repr__(self) -> str:
        return f"ChannelKey(public={self.public_bytes.hex()[:16]}...)"

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def shared_secret(self, peer_public: bytes) -> bytes:
        """X25519 with `peer_public`; a malformed or low-order key raises `ChannelError`."""
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise ChannelError("peer public key is malformed or of low order") from None


class AttestedChannel:
    """One end of an established channel: `seal` outgoing records, `open` incoming ones."""

    __slots__ = ("_recv", "_recv_seq", "_send", "_send_seq")

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._send_seq = 0
        self._recv_seq = 0

    def __repr__(self) -> str:
        return f"AttestedChannel(sent={self._send_seq}, received={self._recv_seq})"

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt the next outgoing record."""
        seq = self._send_seq.to_bytes(_SEQ_SIZE, "big")
        self._send_seq += 1
        return seq + self._send.encrypt(bytes(4) + seq, plaintext, _RECORD_AD + seq)

    def open(self, record: bytes) -> bytes:
        """Decrypt the next incoming record; replay, reordering, truncation or forgery raise."""
        if len(record) < _SEQ_SIZE + _TAG_SIZE:
            raise ChannelError(f"record truncated: {len(record)} bytes is shorter than a record")
        seq = int.from_bytes(record[:_SEQ_SIZE], "big")
        if seq < self._recv_seq:
            raise ChannelError(f"record replayed: sequence number {seq} was already received")
        if seq > self._recv_seq:
            raise ChannelError(
                f"record out of order: expected sequence number {self._recv_seq}, got {seq}"
            )
        try:
            plaintext = self._recv.decrypt(
                bytes(4) + record[:_SEQ_SIZE], record[_SEQ_SIZE:], _RECORD_AD + record[:_SEQ_SIZE]
            )
        except InvalidTag:
            raise ChannelError("record failed authentication (forged or corrupted)") from None
        self._recv_seq += 1
        return plaintext


@dataclass(frozen=True, slots=True)
class EnclaveHello:
    """The enclave's first handshake message: its quote and ephemeral public key."""

    quote: bytes
    public_key: bytes
    key: ChannelKey = field(repr=False, compare=False)

    def finish(self, verifier_public: bytes, nonce: bytes, context: bytes = b"") -> AttestedChannel:
        """The enclave's end of the channel once the verifier answered with its public key."""
        secret = self.key.shared_secret(verifier_public)
        transcript = _transcript(self.public_key, verifier_public, self.quote, nonce, context)
        return _keyed(secret, transcript, send=_TO_VERIFIER, recv=_TO_ENCLAVE)


def open_channel(
    platform: Platform, identity: EnclaveIdentity, nonce: bytes, *, key: ChannelKey | None = None
) -> EnclaveHello:
    """Enclave side: make a fresh key (or use `key`) and have the platform quote it for `nonce`."""
    key = key if key is not None else ChannelKey.generate()
    quote = platform.quote(identity, report_data_for(key.public_bytes, nonce))
    return EnclaveHello(quote.to_bytes(), key.public_bytes, key)


def accept_enclave(
    verified_public_key: bytes,
    quote: bytes,
    nonce: bytes,
    context: bytes = b"",
    *,
    key: ChannelKey | None = None,
) -> tuple[bytes, AttestedChannel]:
    """Verifier side, after `Verifier.verify` succeeded: (own public key, channel end)."""
    key = key if key is not None else ChannelKey.generate()
    secret = key.shared_secret(verified_public_key)
    transcript = _transcript(verified_public_key, key.public_bytes, quote, nonce, context)
    return key.public_bytes, _keyed(secret, transcript, send=_TO_ENCLAVE, recv=_TO_VERIFIER)


def _transcript(
    enclave_pk: bytes, verifier_pk: bytes, quote: bytes, nonce: bytes, context: bytes
) -> bytes:
    items = [_TRANSCRIPT_LABEL, enclave_pk, verifier_pk, quote, nonce, context]
    return hashlib.sha256(encode_canonical(items)).digest()


def _keyed(secret: bytes, transcript: bytes, *, send: bytes, recv: bytes) -> AttestedChannel:
    if not any(secret):
        raise AttestationError("key exchange produced an all-zero secret")
    return AttestedChannel(
        derive_key(secret, send, salt=transcript), derive_key(secret, recv, salt=transcript)
    )
