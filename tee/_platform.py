"""The emulated CPU: a root secret and an attestation key in a platform directory.

On real hardware these are fused into the chip; here they are files in a
directory outside the data directory (the CLI defaults it to
`~/.otrace/platform`), created on first use with 0700/0600 permissions:

    root.key         32 random bytes; every sealing and counter key derives from it
    attestation.key  Ed25519 seed of the key that signs quotes (the "quoting enclave")
    signer.key       Ed25519 seed of this installation's enclave signing key (MRSIGNER)
    counters/        emulated monotonic counters (see `tee._counter`)

Library code receives the directory as a `Path`; it never reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import ConfigError
from tee._files import ensure_private_dir, load_or_create_secret
from tee._identity import EnclaveIdentity, signer_id
from tee._quote import Quote, quote_body

__all__ = ["Platform", "derive_key"]

_KEY_LABEL = b"otrace/tee/v1/"


def derive_key(secret: bytes, label: bytes, *, salt: bytes | None = None) -> bytes:
    """32 bytes of HKDF-SHA256 over `secret`, info `otrace/tee/v1/<label>`, optional salt."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_KEY_LABEL + label)
    return hkdf.derive(secret)


class Platform:
    """One emulated CPU. Use `Platform.open(dir)`; `from_secrets` is the deterministic twin."""

    __slots__ = ("_attestation_key", "_directory", "_root", "_signer_key")

    def __init__(
        self, root: bytes, attestation_seed: bytes, signer_seed: bytes, directory: Path | None
    ) -> None:
        if len(root) != 32 or len(attestation_seed) != 32 or len(signer_seed) != 32:
            raise ConfigError("platform secrets must be 32 bytes each")
        self._root = root
        self._attestation_key = Ed25519PrivateKey.from_private_bytes(attestation_seed)
        self._signer_key = Ed25519PrivateKey.from_private_bytes(signer_seed)
        self._directory = directory

    @classmethod
    def open(cls, directory: Path) -> Platform:
        """Load the platform in `directory`, creating its secrets on first use."""
        ensure_private_dir(directory)
        root, attestation, signer = (
            load_or_create_secret(directory / name, "platform secret") for name in _SECRET_FILES
        )
        return cls(root, attestation, signer, directory)

    @classmethod
    def from_secrets(
        cls,
        root: bytes,
        attestation_seed: bytes,
        signer_seed: bytes,
        *,
        directory: Path | None = None,
    ) -> Platform:
        """A platform from given secrets (tests, vectors); no files are read."""
        return cls(root, attestation_seed, signer_seed, directory)

    def __repr__(self) -> str:
        key = self.attestation_public_key.hex()[:16]
        return f"Platform(directory={self._directory!s}, attestation_key={key}...)"

    @property
    def directory(self) -> Path:
        """The platform directory (counters live below it)."""
        if self._directory is None:
            raise ConfigError("this platform was built from secrets and has no directory")
        return self._directory

    @property
    def attestation_public_key(self) -> bytes:
        """Raw Ed25519 public key verifiers must trust to accept this platform's quotes."""
        return self._attestation_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def signer_public_key(self) -> bytes:
        """Raw Ed25519 public key of this installation's enclave signer."""
        return self._signer_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def identity(self, measurement: bytes, security_version: int) -> EnclaveIdentity:
        """The identity of an enclave build with `measurement`, signed by this installation."""
        return EnclaveIdentity(measurement, signer_id(self.signer_public_key), security_version)

    def derive_key(self, label: bytes) -> bytes:
        """A 32-byte key derived from the root secret for the purpose named by `label`."""
        return derive_key(self._root, label)

    def quote(self, identity: EnclaveIdentity, report_data: bytes) -> Quote:
        """Sign `identity` and 64 bytes of `report_data` with the attestation key."""
        body = quote_body(identity, report_data)
        return Quote(identity, report_data, self._attestation_key.sign(body))


_SECRET_FILES = ("root.key", "attestation.key", "signer.key")
