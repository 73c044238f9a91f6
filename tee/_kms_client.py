"""`KmsClient`: how an enclave (or an administrator) talks to a KMS over any transport."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from otrace.errors import AttestationError, ChannelError, ConfigError
from tee._channel import ChannelKey, open_channel
from tee._encoding import decode_canonical, expect_bytes
from tee._identity import EnclaveIdentity
from tee._kms import Kms, ReleaseRequest, names_context, release_transcript
from tee._kms_service import (
    GrpcKmsTransport,
    KmsTransport,
    LocalKmsTransport,
    decode_message,
    decode_release_response,
    encode_message,
    policy_fields,
    release_fields,
)
from tee._platform import Platform
from tee._policy import SignedPolicy, check_secret_name

__all__ = ["KmsClient"]


class KmsClient:
    """Speaks the KMS protocol over a `KmsTransport`: `local(kms)` or `connect("host:port")`.

    `kms_key` pins the KMS's Ed25519 key; `obtain_secrets` needs it, so an
    enclave never accepts keys from a party that is not its KMS. Policy
    administration does not (policies carry owner signatures).
    """

    def __init__(self, transport: KmsTransport, *, kms_key: bytes | None = None) -> None:
        self._transport = transport
        self._kms_key = None if kms_key is None else _load_kms_key(kms_key)

    @classmethod
    def local(cls, kms: Kms) -> KmsClient:
        """A client of an embedded, in-process KMS (its key is pinned directly)."""
        return cls(LocalKmsTransport(kms), kms_key=kms.public_key)

    @classmethod
    def connect(
        cls, target: str, *, kms_key: bytes | None = None, timeout: float = 10.0
    ) -> KmsClient:
        """A client of a KMS served over gRPC at `target` (`host:port`)."""
        return cls(GrpcKmsTransport(target, timeout=timeout), kms_key=kms_key)

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def obtain_secrets(
        self,
        platform: Platform,
        identity: EnclaveIdentity,
        names: Iterable[str],
        *,
        key: ChannelKey | None = None,
    ) -> dict[str, bytes]:
        """Attest `identity` on `platform` to the KMS and receive exactly `names`.

        Runs inside the enclave: the quote binds a fresh channel key to the KMS's
        nonce, and the secrets arrive as one record of the attested channel.
        """
        if self._kms_key is None:
            raise ConfigError("pin the KMS public key (kms_key) before asking it for secrets")
        wanted = tuple(sorted({check_secret_name(name) for name in names}))
        challenge = self._transport.call("Challenge", encode_message({}))
        nonce = decode_message(challenge, frozenset({"nonce"}), "Challenge response")["nonce"]
        hello = open_channel(platform, identity, expect_bytes(nonce, "nonce"), key=key)
        request = ReleaseRequest(hello.quote, hello.public_key, nonce, wanted)
        raw = self._transport.call("Release", encode_message(release_fields(request)))
        response = decode_release_response(raw)
        try:
            self._kms_key.verify(
                response.signature, release_transcript(request, response.public_key)
            )
        except InvalidSignature:
            raise AttestationError("KMS answer is not signed by the pinned KMS key") from None
        channel = hello.finish(response.public_key, nonce, names_context(wanted))
        return _secrets_from(channel.open(response.record), wanted)

    def policy(self) -> SignedPolicy | None:
        """The KMS's current signed policy, or None before the first one."""
        raw = self._transport.call("GetPolicy", encode_message({}))
        try:
            fields = decode_canonical(raw)
        except ValueError:
            fields = None
        if fields == {}:
            return None
        fields = decode_message(raw, frozenset({"policy", "owner", "signature"}), "policy")
        return SignedPolicy(fields["policy"], fields["owner"], fields["signature"])

    def set_policy(self, update: SignedPolicy) -> bytes:
        """Install a signed policy update; returns the new policy hash."""
        raw = self._transport.call("SetPolicy", encode_message(policy_fields(update)))
        return bytes(decode_message(raw, frozenset({"digest"}), "SetPolicy response")["digest"])


def _load_kms_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise ConfigError("a KMS key is a raw 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _secrets_from(plaintext: bytes, wanted: tuple[str, ...]) -> dict[str, bytes]:
    try:
        secrets = decode_canonical(plaintext)
    except ValueError:
        secrets = None
    if not isinstance(secrets, dict) or sorted(secrets) != list(wanted):
        raise ChannelError("KMS answer does not hold exactly the requested secrets")
    if not all(isinstance(value, bytes) and len(value) == 32 for value in secrets.values()):
        raise ChannelError("KMS answer holds a malformed secret")
    return secrets
