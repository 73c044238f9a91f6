"""The chain manifest: the owner-signed order of a chain's functions.

Canonical CBOR map `{version, chain_id, functions: [[name, measurement], ...],
gateway, not_after_ms, request_ttl_ms}`; its SHA-256 is the `manifest_hash`
every hop names. The owner signs `otrace/faas/v1/manifest\\0` + those bytes
with Ed25519; functions pin the owner keys they accept. Hop `i` (0 <= i < n)
goes to `functions[i]`, hop `n` returns the result to the gateway.

`policy_rules` turns a manifest into KMS policy rules that give each
measurement exactly the hop secrets of its own hops (in and out), using the
KMS's derived secrets `chain/<chain_id>/hop/<step>/<receiver measurement>`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import ChainViolation, ConfigError
from otrace.faas._function import GATEWAY, check_function_name
from tee import PolicyRule, hop_secret_name
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_int, expect_map

__all__ = ["ChainManifest", "FunctionEntry", "SignedManifest", "sign_manifest"]

_VERSION = 1
_SIGNATURE_LABEL = b"otrace/faas/v1/manifest\x00"
_KEYS = frozenset({"version", "chain_id", "functions", "gateway", "not_after_ms", "request_ttl_ms"})


@dataclass(frozen=True, slots=True)
class FunctionEntry:
    """One step of a chain: the routing name and the measurement that must run it."""

    name: str
    measurement: bytes

    def __post_init__(self) -> None:
        check_function_name(self.name)
        if len(self.measurement) != 32:
            raise ConfigError("a function measurement is a 32-byte digest")


@dataclass(frozen=True, slots=True)
class ChainManifest:
    """A chain's ordered functions, its gateway, validity and request lifetime."""

    chain_id: str
    functions: tuple[FunctionEntry, ...]
    gateway: bytes
    not_after_ms: int
    request_ttl_ms: int = 60_000
    _digest: bytes = field(init=False, repr=False, compare=False, default=b"")
    _hop_secrets: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())
    _receivers: tuple[FunctionEntry, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        check_function_name(self.chain_id)
        if not self.functions or len(self.functions) > 1000:
            raise ConfigError("a chain has between 1 and 1000 functions")
        if any(entry.name == GATEWAY for entry in self.functions):
            raise ConfigError(f"{GATEWAY!r} is reserved for the gateway")
        if len(self.gateway) != 32:
            raise ConfigError("the gateway measurement is a 32-byte digest")
        if self.request_ttl_ms <= 0 or self.not_after_ms <= 0:
            raise ConfigError("request_ttl_ms and not_after_ms must be positive")
        # Hot on every hop: computed once (the manifest is immutable).
        object.__setattr__(self, "_digest", hashlib.sha256(self.to_bytes()).digest())
        receivers = (*self.functions, FunctionEntry(GATEWAY, self.gateway))
        object.__setattr__(self, "_receivers", receivers)
        names = tuple(
            hop_secret_name(self.chain_id, step, entry.measurement)
            for step, entry in enumerate(receivers)
        )
        object.__setattr__(self, "_hop_secrets", names)

    def to_bytes(self) -> bytes:
        return encode_canonical(
            {
                "version": _VERSION,
                "chain_id": self.chain_id,
                "functions": [[f.name, f.measurement] for f in self.functions],
                "gateway": self.gateway,
                "not_after_ms": self.not_after_ms,
                "request_ttl_ms": self.request_ttl_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ChainManifest:
        """Parse canonical manifest bytes; anything else raises `ChainViolation`."""
        try:
            fields = expect_map(decode_canonical(data), _KEYS)
            if fields["version"] != _VERSION:
                raise ValueError(f"unsupported manifest version {fields['version']!r}")
            entries = fields["functions"]
            if not isinstance(entries, list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in entries
            ):
                raise ValueError("functions must be a list of [name, measurement]")
            return cls(
                chain_id=str(fields["chain_id"]),
                functions=tuple(FunctionEntry(e[0], expect_bytes(e[1], "m", 32)) for e in entries),
                gateway=expect_bytes(fields["gateway"], "gateway", 32),
                not_after_ms=expect_int(fields["not_after_ms"], "not_after_ms"),
                request_ttl_ms=expect_int(fields["request_ttl_ms"], "request_ttl_ms"),
            )
        except (ValueError, ConfigError) as exc:
            raise ChainViolation(f"chain manifest is malformed: {exc}") from None

    @property
    def digest(self) -> bytes:
        """The manifest hash every hop's metadata names."""
        return self._digest

    @property
    def length(self) -> int:
        return len(self.functions)

    def receiver(self, step: int) -> FunctionEntry:
        """Who receives hop `step`: a function, or the gateway for the final hop."""
        if not 0 <= step < len(self._receivers):
            raise ChainViolation(f"step {step} is outside chain {self.chain_id!r}")
        return self._receivers[step]

    def steps_of(self, measurement: bytes) -> list[int]:
        """The steps the function with `measurement` runs in this chain."""
        return [i for i, f in enumerate(self.functions) if f.measurement == measurement]

    def hop_secret(self, step: int) -> str:
        """The KMS name of hop `step`'s secret (bound to the receiver's measurement)."""
        if not 0 <= step < len(self._hop_secrets):
            raise ChainViolation(f"step {step} is outside chain {self.chain_id!r}")
        return self._hop_secrets[step]

    def hops_of(self, measurement: bytes) -> set[int]:
        """The hops a function (or, with the gateway measurement, the gateway) uses."""
        hops = {h for step in self.steps_of(measurement) for h in (step, step + 1)}
        if measurement == self.gateway:
            hops |= {0, self.length}
        return hops

    def policy_rules(self, *, min_security_version: int = 0) -> tuple[PolicyRule, ...]:
        """KMS rules releasing to each measurement the secrets of its own hops only."""
        members = dict.fromkeys([*(f.measurement for f in self.functions), self.gateway])
        return tuple(
            PolicyRule(
                secrets=tuple(self.hop_secret(h) for h in sorted(self.hops_of(m))),
                measurement=m,
                min_security_version=min_security_version,
            )
            for m in members
        )


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """Manifest bytes with the owner's Ed25519 key and signature."""

    manifest: bytes
    owner: bytes
    signature: bytes
    _digest: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        # Every request the gateway sends names it; computed once (the bytes are immutable).
        object.__setattr__(self, "_digest", hashlib.sha256(self.manifest).digest())

    def to_bytes(self) -> bytes:
        return encode_canonical([self.manifest, self.owner, self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        try:
            fields = decode_canonical(data)
            if not isinstance(fields, list) or len(fields) != 3:
                raise ValueError("expected [manifest, owner, signature]")
            return cls(
                expect_bytes(fields[0], "manifest"),
                expect_bytes(fields[1], "owner", 32),
                expect_bytes(fields[2], "signature", 64),
            )
        except ValueError as exc:
            raise ChainViolation(f"signed manifest is malformed: {exc}") from None

    @property
    def digest(self) -> bytes:
        """SHA-256 of the manifest bytes: the `manifest_hash` hops name."""
        return self._digest

    def verified(self, owners: Collection[bytes]) -> ChainManifest:
        """The manifest, if one of the pinned `owners` signed it; else `ChainViolation`."""
        if self.owner not in owners:
            raise ChainViolation("chain manifest is not signed by a pinned chain owner")
        try:
            key = Ed25519PublicKey.from_public_bytes(self.owner)
            key.verify(self.signature, _SIGNATURE_LABEL + self.manifest)
        except (InvalidSignature, ValueError):
            raise ChainViolation("chain manifest signature does not verify") from None
        return ChainManifest.from_bytes(self.manifest)


def sign_manifest(manifest: ChainManifest, owner_key: Ed25519PrivateKey) -> SignedManifest:
    """Sign `manifest` with the chain owner's key."""
    data = manifest.to_bytes()
    owner = owner_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SignedManifest(data, owner, owner_key.sign(_SIGNATURE_LABEL + data))
