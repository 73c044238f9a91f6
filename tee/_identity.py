"""Enclave identity: what a quote says an enclave is.

The measurement is SHA-256 over the enclave's code and its security-relevant
configuration, like SGX's MRENCLAVE: every trusted module's relative path and
bytes (sorted by path, each length-prefixed) followed by the canonical CBOR of
the configuration. The signer id is SHA-256 of the enclave author's Ed25519
public key, like MRSIGNER. The security version is bumped by the author when a
fix must lock out older builds. `simulated` is always True in this emulation.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import ConfigError
from tee._encoding import encode_canonical

__all__ = [
    "SECURITY_VERSION",
    "TRUSTED_PACKAGES",
    "EnclaveIdentity",
    "measure_code",
    "signer_id",
    "trusted_package_roots",
]

#: This build's security version; raise it when a fix must lock out older enclaves.
SECURITY_VERSION = 1

#: The packages whose code runs inside the enclave and is therefore measured.
TRUSTED_PACKAGES: tuple[str, ...] = ("tee", "oram_store", "query", "collector")

_MEASUREMENT_LABEL = b"otrace/tee/v1/measurement\x00"


@dataclass(frozen=True, slots=True)
class EnclaveIdentity:
    """Measurement, signer id and security version of one enclave build."""

    measurement: bytes
    signer: bytes
    security_version: int
    simulated: bool = True

    def __post_init__(self) -> None:
        if len(self.measurement) != 32 or len(self.signer) != 32:
            raise ConfigError("measurement and signer id must be 32-byte SHA-256 digests")
        if isinstance(self.security_version, bool) or not 0 <= self.security_version < 2**32:
            raise ConfigError("security version must be an integer in [0, 2**32)")


def signer_id(public_key: Ed25519PublicKey | bytes) -> bytes:
    """SHA-256 of the signer's raw 32-byte Ed25519 public key."""
    if isinstance(public_key, Ed25519PublicKey):
        public_key = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if len(public_key) != 32:
        raise ConfigError("an Ed25519 public key has 32 bytes")
    return hashlib.sha256(public_key).digest()


def trusted_package_roots(packages: Iterable[str] = TRUSTED_PACKAGES) -> list[Path]:
    """The directories of the installed trusted packages (packages not installed are skipped)."""
    roots: list[Path] = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            # Namespace packages may list a directory twice, or an import-hook pseudo-path.
            path = Path(location).resolve()
            if path.is_dir() and path not in roots:
                roots.append(path)
    return roots


def measure_code(
    roots: Sequence[Path] | None = None, config: Mapping[str, object] | None = None
) -> bytes:
    """SHA-256 over the `*.py` files under `roots` and the canonical `config`.

    Each file is named by its root directory's name and its path below it, so a
    copy of the packages elsewhere measures the same as the installed ones.
    """
    if roots is None:
        roots = trusted_package_roots()
    files: dict[str, Path] = {}
    for root in roots:
        for path in root.rglob("*.py"):
            files[f"{root.name}/{path.relative_to(root).as_posix()}"] = path
    digest = hashlib.sha256(_MEASUREMENT_LABEL)
    for relative in sorted(files):
        _absorb(digest, relative.encode())
        _absorb(digest, files[relative].read_bytes())
    _absorb(digest, encode_canonical(dict(config or {})))
    return digest.digest()


def _absorb(digest: hashlib._Hash, item: bytes) -> None:
    digest.update(len(item).to_bytes(8, "big"))
    digest.update(item)
