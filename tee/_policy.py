"""KMS policies: which enclaves receive which named secrets, and who may change that.

A policy is canonical CBOR; its hash (SHA-256 of those bytes) names it. Every
update names its predecessor's hash, so two administrators editing the same
version cannot silently overwrite each other (the second update is refused),
and is signed by an owner key listed in the policy it replaces (the first
policy is signed by one of its own owners). Secret names are `oram_key`,
`index_key`, `state_key`, `chain/<name>` and the derived hop secrets
`chain/<name>/hop/<step>/<measurement hex>` (see `tee._kms`): a rule that lists
a hop secret releases only that one step's key, never the chain key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from otrace.errors import AttestationError, PolicyError
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_int, expect_map
from tee._files import load_or_create_secret
from tee._identity import EnclaveIdentity
from tee._verifier import NonceRegistry, Verifier

__all__ = [
    "KmsPolicy",
    "PolicyRule",
    "SignedPolicy",
    "base_secret_name",
    "check_secret_name",
    "hop_secret_name",
    "load_or_create_owner_key",
    "sign_policy",
]

_CHAIN = r"chain/[a-z0-9][a-z0-9._-]{0,62}"
_SECRET_NAME = re.compile(
    rf"oram_key|index_key|state_key|{_CHAIN}|{_CHAIN}/hop/(?:0|[1-9][0-9]{{0,3}})/[0-9a-f]{{64}}"
)
_HOP_SUFFIX = re.compile(r"/hop/(0|[1-9][0-9]*)/([0-9a-f]{64})\Z")
_SIGNATURE_LABEL = b"otrace/tee/v1/kms-policy\x00"
_RULE_KEYS = frozenset({"measurement", "signer", "min_security_version", "secrets"})
_POLICY_KEYS = frozenset(
    {"version", "predecessor", "owners", "trusted_platform_keys", "allow_simulated", "rules"}
)
_POLICY_VERSION = 1


def check_secret_name(name: str) -> str:
    """`name` if it is a valid secret name, else `PolicyError`."""
    if not isinstance(name, str) or not _SECRET_NAME.fullmatch(name):
        raise PolicyError(
            f"{name!r} is not a secret name (oram_key, index_key, state_key, chain/<name> "
            "or chain/<name>/hop/<step>/<measurement hex>)"
        )
    return name


def hop_secret_name(chain: str, step: int, measurement: bytes) -> str:
    """The derived secret of hop `step` into the function with `measurement` of `chain`."""
    if len(measurement) != 32:
        raise PolicyError("a hop secret names a 32-byte measurement")
    return check_secret_name(f"chain/{chain}/hop/{step}/{measurement.hex()}")


def base_secret_name(name: str) -> tuple[str, tuple[int, bytes] | None]:
    """(stored secret name, (step, measurement) for a derived hop secret or None)."""
    hop = _HOP_SUFFIX.search(check_secret_name(name))
    if hop is None:
        return name, None
    return name[: hop.start()], (int(hop.group(1)), bytes.fromhex(hop.group(2)))


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """Release `secrets` to the enclave with `measurement`, or to any enclave by `signer`."""

    secrets: tuple[str, ...]
    measurement: bytes | None = None
    signer: bytes | None = None
    min_security_version: int = 0

    def __post_init__(self) -> None:
        if (self.measurement is None) == (self.signer is None):
            raise PolicyError("a policy rule names exactly one of measurement or signer")
        for digest in (self.measurement, self.signer):
            if digest is not None and len(digest) != 32:
                raise PolicyError("a rule's measurement or signer is a 32-byte digest")
        for name in self.secrets:
            check_secret_name(name)
        # One order for one set, so equal rules compare (and encode) equal.
        object.__setattr__(self, "secrets", tuple(sorted(set(self.secrets))))

    def matches(self, identity: EnclaveIdentity) -> bool:
        if self.measurement is not None:
            return hmac.compare_digest(identity.measurement, self.measurement)
        assert self.signer is not None  # __post_init__: exactly one of the two is set
        return hmac.compare_digest(identity.signer, self.signer)


@dataclass(frozen=True, slots=True)
class KmsPolicy:
    """The whole policy document a KMS enforces."""

    rules: tuple[PolicyRule, ...]
    trusted_platform_keys: tuple[bytes, ...]
    owners: tuple[bytes, ...]
    predecessor: bytes | None = None
    allow_simulated: bool = False

    def __post_init__(self) -> None:
        if not self.owners or any(len(owner) != 32 for owner in self.owners):
            raise PolicyError("a policy needs at least one owner (raw Ed25519 public key)")
        if not self.trusted_platform_keys or any(len(k) != 32 for k in self.trusted_platform_keys):
            raise PolicyError("a policy needs at least one trusted platform key (32 bytes)")
        if self.predecessor is not None and len(self.predecessor) != 32:
            raise PolicyError("a predecessor is a 32-byte policy hash")

    def to_bytes(self) -> bytes:
        return encode_canonical(
            {
                "version": _POLICY_VERSION,
                "predecessor": self.predecessor,
                "owners": list(self.owners),
                "trusted_platform_keys": list(self.trusted_platform_keys),
                "allow_simulated": self.allow_simulated,
                "rules": [_rule_to_map(rule) for rule in self.rules],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KmsPolicy:
        """Parse canonical policy bytes; anything else raises `PolicyError`."""
        try:
            fields = expect_map(decode_canonical(data), _POLICY_KEYS)
            if fields["version"] != _POLICY_VERSION:
                raise ValueError(f"unsupported policy version {fields['version']!r}")
            if not isinstance(fields["allow_simulated"], bool):
                raise ValueError("allow_simulated must be a boolean")
            predecessor = fields["predecessor"]
            policy = cls(
                rules=tuple(_rule_from_map(rule) for rule in _list(fields["rules"])),
                trusted_platform_keys=_byte_list(fields["trusted_platform_keys"]),
                owners=_byte_list(fields["owners"]),
                predecessor=None if predecessor is None else expect_bytes(predecessor, "pred."),
                allow_simulated=fields["allow_simulated"],
            )
        except ValueError as exc:
            raise PolicyError(f"policy is malformed: {exc}") from None
        if policy.to_bytes() != data:
            # The hash names the policy, so one policy must have exactly one byte form.
            raise PolicyError("policy is not in normal form (each rule's secrets sorted, unique)")
        return policy

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON-able data (hex for bytes), the form `otrace kms policy` edits."""
        return {
            "predecessor": None if self.predecessor is None else self.predecessor.hex(),
            "owners": [owner.hex() for owner in self.owners],
            "trusted_platform_keys": [key.hex() for key in self.trusted_platform_keys],
            "allow_simulated": self.allow_simulated,
            "rules": [_rule_to_json(rule) for rule in self.rules],
        }

    @classmethod
    def from_json(cls, data: object) -> KmsPolicy:
        """Parse the JSON form; a missing or mistyped field raises `PolicyError`."""
        try:
            fields = expect_map(data, _POLICY_KEYS - {"version"})
            if not isinstance(fields["allow_simulated"], bool):
                raise ValueError("allow_simulated must be true or false")
            predecessor = fields["predecessor"]
            return cls(
                rules=tuple(_rule_from_json(rule) for rule in _list(fields["rules"])),
                trusted_platform_keys=tuple(
                    _unhex(k) for k in _list(fields["trusted_platform_keys"])
                ),
                owners=tuple(_unhex(owner) for owner in _list(fields["owners"])),
                predecessor=None if predecessor is None else _unhex(predecessor),
                allow_simulated=fields["allow_simulated"],
            )
        except (ValueError, TypeError) as exc:
            raise PolicyError(f"policy JSON is malformed: {exc}") from None

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical bytes: what the next update names as predecessor."""
        return hashlib.sha256(self.to_bytes()).digest()

    def secret_names(self) -> frozenset[str]:
        """The stored secrets this policy needs (a hop secret needs its chain's secret)."""
        return frozenset(base_secret_name(name)[0] for rule in self.rules for name in rule.secrets)

    def verifier(self, nonces: NonceRegistry) -> Verifier:
        """A verifier admitting exactly the enclaves some rule names."""
        if not self.rules:
            raise PolicyError("the KMS policy allows no enclave")
        return Verifier(
            trusted_platform_keys=self.trusted_platform_keys,
            allowed_measurements=[r.measurement for r in self.rules if r.measurement],
            allowed_signers=[r.signer for r in self.rules if r.signer],
            allow_simulated=self.allow_simulated,
            nonces=nonces,
        )

    def grants(self, identity: EnclaveIdentity) -> frozenset[str]:
        """The secret names released to a verified `identity`; a low svn raises."""
        matching = [rule for rule in self.rules if rule.matches(identity)]
        eligible = [r for r in matching if identity.security_version >= r.min_security_version]
        if matching and not eligible:
            lowest = min(rule.min_security_version for rule in matching)
            raise AttestationError(
                f"enclave security version {identity.security_version} is below "
                f"the policy minimum {lowest}"
            )
        return frozenset(name for rule in eligible for name in rule.secrets)


@dataclass(frozen=True, slots=True)
class SignedPolicy:
    """Policy bytes with an owner's Ed25519 signature."""

    policy: bytes
    owner: bytes
    signature: bytes

    def parsed(self) -> KmsPolicy:
        return KmsPolicy.from_bytes(self.policy)

    def check_signed_by_one_of(self, owners: Iterable[bytes]) -> None:
        """Raise `PolicyError` unless one of `owners` signed this policy."""
        if self.owner not in set(owners):
            raise PolicyError("policy update is not signed by an owner of the current policy")
        try:
            key = Ed25519PublicKey.from_public_bytes(self.owner)
            key.verify(self.signature, _SIGNATURE_LABEL + self.policy)
        except (InvalidSignature, ValueError):
            raise PolicyError("policy signature does not verify") from None


def sign_policy(policy: KmsPolicy, owner_key: Ed25519PrivateKey) -> SignedPolicy:
    """Sign `policy` with an owner key (which the current policy must list)."""
    data = policy.to_bytes()
    owner = owner_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SignedPolicy(data, owner, owner_key.sign(_SIGNATURE_LABEL + data))


def _rule_to_map(rule: PolicyRule) -> dict[str, object]:
    return {
        "measurement": rule.measurement,
        "signer": rule.signer,
        "min_security_version": rule.min_security_version,
        "secrets": list(rule.secrets),
    }


def _rule_from_map(value: object) -> PolicyRule:
    fields = expect_map(value, _RULE_KEYS)
    names = _list(fields["secrets"])
    if not all(isinstance(name, str) for name in names):
        raise ValueError("secret names are strings")
    return PolicyRule(
        secrets=tuple(names),
        measurement=_optional_digest(fields["measurement"], "measurement"),
        signer=_optional_digest(fields["signer"], "signer"),
        min_security_version=expect_int(fields["min_security_version"], "min_security_version"),
    )


def _optional_digest(value: object, what: str) -> bytes | None:
    return None if value is None else expect_bytes(value, what, 32)


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


def _byte_list(value: object) -> tuple[bytes, ...]:
    return tuple(expect_bytes(item, "key", 32) for item in _list(value))


def _rule_to_json(rule: PolicyRule) -> dict[str, object]:
    identity = {"measurement": rule.measurement} if rule.measurement else {"signer": rule.signer}
    return {
        **{key: value.hex() for key, value in identity.items() if value is not None},
        "secrets": list(rule.secrets),
        "min_security_version": rule.min_security_version,
    }


def _rule_from_json(value: object) -> PolicyRule:
    if not isinstance(value, dict):
        raise ValueError("a rule is an object")
    unknown = set(value) - _RULE_KEYS
    if unknown:
        raise ValueError(f"unknown rule fields {sorted(unknown)}")
    measurement, signer = value.get("measurement"), value.get("signer")
    names = _list(value.get("secrets"))
    if not all(isinstance(name, str) for name in names):
        raise ValueError("secret names are strings")
    return PolicyRule(
        secrets=tuple(names),
        measurement=None if measurement is None else _unhex(measurement),
        signer=None if signer is None else _unhex(signer),
        min_security_version=expect_int(
            value.get("min_security_version", 0), "min_security_version"
        ),
    )


def _unhex(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a hex string")
    return bytes.fromhex(value)


def load_or_create_owner_key(path: Path) -> Ed25519PrivateKey:
    """The policy owner's Ed25519 key stored (as a 32-byte seed, 0600) at `path`."""
    return Ed25519PrivateKey.from_private_bytes(load_or_create_secret(path, "owner key"))
