"""The otrace exception tree: every error otrace raises on purpose derives from
`OTraceError`, so callers can catch one root and the CLI can turn any of them
into a readable message.

    OTraceError
    ├── ConfigError            bad settings, flags or configuration files
    ├── InvalidRequest         bad caller input: out-of-range ids, wrong sizes, bad syntax
    ├── StorageError           the storage backend failed or is unusable (not tampering)
    ├── IntegrityError         stored or received bytes fail authentication: tampering,
    │   │                      swapped rows, stale versions, bad MACs
    │   └── RollbackError      a consistent but older state was restored (monotonic counter)
    ├── CapacityError          a fixed bound was reached
    │   └── StashOverflow      the ORAM stash outgrew its documented bound
    ├── AttestationError       a quote, report or attested message was refused
    │   └── ChannelError       attested-channel message replayed, reordered or forged
    ├── PolicyError            a KMS policy update or secret request was refused
    ├── AuthenticationError    an analyst credential was refused by the query service
    ├── UnavailableError       a service otrace talks to (KMS, enclave process) is unreachable
    │                          or died
    ├── FencingError           a writer's term is stale (split-brain guard)
    ├── ElectionError          a leader-election message (registration, tracker, shuffle,
    │                          claim) was refused
    └── ChainViolation         a FaaS chain message broke the signed chain order

Messages never contain secret material. Crypto failures stay opaque: they say
*what* was refused, never which byte or which key made it fail.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "AuthenticationError",
    "CapacityError",
    "ChainViolation",
    "ChannelError",
    "ConfigError",
    "ElectionError",
    "FencingError",
    "IntegrityError",
    "InvalidRequest",
    "OTraceError",
    "PolicyError",
    "RollbackError",
    "StashOverflow",
    "StorageError",
    "UnavailableError",
]


class OTraceError(Exception):
    """Root of every error otrace raises on purpose."""


class ConfigError(OTraceError):
    """Settings, flags or a configuration file are invalid."""


class InvalidRequest(OTraceError):
    """The caller's input is malformed or out of range; nothing was changed."""


class StorageError(OTraceError):
    """The storage backend failed or holds something otrace cannot use."""


class IntegrityError(OTraceError):
    """Authenticated data failed verification: tampering, swapping or staleness."""


class RollbackError(IntegrityError):
    """A consistent but older state was presented (detected by the monotonic counter)."""


class CapacityError(OTraceError):
    """A fixed, documented bound was reached."""


class StashOverflow(CapacityError):
    """The ORAM stash exceeded its bound; the access was not committed."""


class AttestationError(OTraceError):
    """A quote, report or attested message was refused."""


class ChannelError(AttestationError):
    """An attested-channel message was replayed, reordered, truncated or forged."""


class PolicyError(OTraceError):
    """A KMS policy update or secret request was refused."""


class AuthenticationError(OTraceError):
    """The query service refused an analyst credential (unknown analyst or wrong key)."""


class UnavailableError(OTraceError):
    """A service otrace depends on (the KMS, the enclave process) is unreachable or died."""


class FencingError(OTraceError):
    """A commit carried a stale term: another writer has taken over."""


class ElectionError(OTraceError):
    """A leader-election message was refused: forged, replayed, tampered or out of turn."""


class ChainViolation(OTraceError):
    """A function-chain message broke the owner-signed chain."""
