"""Analyst credentials: what `otrace search` needs to talk to a node, in one private file.

    name           the analyst's name (the node derives its key from it)
    index_key      K_index: computes trapdoors, so keywords never leave the client
    auth_key       HMAC(analyst root, name): proves the analyst to the enclave
    platform_key   the node platform's attestation key (Ed25519, raw)
    measurements   enclave measurements the client accepts
    endpoint       the query API address the node listens on

The analyst root key is derived from the node's state key inside the enclave,
so only the enclave can mint `auth_key`s; `otrace serve` asks it for one on
first start and writes the file (0600). Stored as canonical CBOR.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from otrace.errors import ConfigError
from tee import read_private_file, write_private_file

__all__ = ["AnalystCredential", "analyst_key"]

_VERSION = 1
_AUTH = b"otrace/query/v1/analyst\x00"


def analyst_key(root: bytes, name: str) -> bytes:
    """The authentication key of analyst `name` under the enclave's analyst root key."""
    return hmac.digest(root, _AUTH + name.encode(), "sha256")


@dataclass(frozen=True, slots=True)
class AnalystCredential:
    name: str
    index_key: bytes = field(repr=False)
    auth_key: bytes = field(repr=False)
    platform_key: bytes
    measurements: tuple[bytes, ...]
    endpoint: str = "127.0.0.1:16685"

    def to_bytes(self) -> bytes:
        return cbor2.dumps(
            {
                "version": _VERSION,
                "name": self.name,
                "index_key": self.index_key,
                "auth_key": self.auth_key,
                "platform_key": self.platform_key,
                "measurements": list(self.measurements),
                "endpoint": self.endpoint,
            },
            canonical=True,
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "credential") -> AnalystCredential:
        try:
            doc = cbor2.loads(raw)
            if doc.get("version") != _VERSION:
                raise ConfigError(f"{source}: unsupported credential version {doc.get('version')}")
            return cls(
                str(doc["name"]),
                bytes(doc["index_key"]),
                bytes(doc["auth_key"]),
                bytes(doc["platform_key"]),
                tuple(bytes(m) for m in doc["measurements"]),
                str(doc["endpoint"]),
            )
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(f"{source} is not an otrace analyst credential") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> AnalystCredential:
        raw = read_private_file(path)
        if raw is None:
            raise ConfigError(
                f"no analyst credential at {path}: `otrace serve` writes one to its data "
                "directory on first start; pass --key-file or set OTRACE_KEY_FILE"
            )
        return cls.from_bytes(raw, source=str(path))
