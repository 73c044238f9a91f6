"""Replica keys, trackers, the beacon, slot selection and term claims.

One term of the election (Boneh, Eskandarian, Hanzlik, Greco 2020, DDH variant):

1. replica i registered K_i = k_i*G once;
2. it submits a fresh tracker (R, S) = (r*G, k_i*R) with a DLEQ proof that
   log_G(K_i) == log_R(S), bound to the term and its name (`TrackerSubmission`);
3. the shuffler enclave re-randomises and permutes the trackers (`tee.ssle._shuffle`);
4. the beacon picks a slot among the outputs (`beacon_for`, `slot_for`);
5. only the owner sees k_i*R' == S' at that slot (`ReplicaKey.recognises`) and
   claims the term with a DLEQ proof log_G(K_i) == log_R'(S') bound to
   (term, beacon, slot, name) (`Claim`, `verify_claim`).

Secrets (k_i, r) never leave `ReplicaKey` and never appear in a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from otrace.errors import ElectionError
from tee._encoding import decode_canonical, encode_canonical, expect_bytes, expect_int
from tee.ssle import _dleq
from tee.ssle._group import (
    POINT_SIZE,
    RandomSource,
    base_mul,
    mul,
    point,
    random_scalar,
    scalar,
)

__all__ = [
    "BEACON_SIZE",
    "CLAIM_LABEL",
    "TRACKER_LABEL",
    "Claim",
    "Draw",
    "Registry",
    "ReplicaKey",
    "Tracker",
    "TrackerSubmission",
    "beacon_for",
    "check_registration",
    "slot_for",
    "verify_claim",
    "verify_submission",
]

TRACKER_LABEL = b"otrace/ssle/v1/tracker\x00"
CLAIM_LABEL = b"otrace/ssle/v1/claim\x00"
_BEACON_LABEL = b"otrace/ssle/v1/beacon\x00"
BEACON_SIZE = 64
_CLAIM_VERSION = 1
MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class Tracker:
    """(R, S) = (r*G, k*r*G): 64 bytes on the wire, `R || S`."""

    r: bytes
    s: bytes

    def to_bytes(self) -> bytes:
        return self.r + self.s

    @classmethod
    def from_bytes(cls, raw: object, what: str = "tracker") -> Tracker:
        """Parse and validate both points (canonical, not the identity)."""
        if not isinstance(raw, bytes) or len(raw) != 2 * POINT_SIZE:
            raise ElectionError(f"{what} must be {2 * POINT_SIZE} bytes (R || S)")
        return cls(point(raw[:POINT_SIZE], f"{what} R"), point(raw[POINT_SIZE:], f"{what} S"))


@dataclass(frozen=True, slots=True)
class TrackerSubmission:
    """A replica's tracker for one term with its proof of being well formed."""

    term: int
    replica: str
    tracker: Tracker
    proof: bytes

    def to_bytes(self) -> bytes:
        return encode_canonical([self.term, self.replica, self.tracker.to_bytes(), self.proof])

    @classmethod
    def from_bytes(cls, raw: bytes) -> TrackerSubmission:
        try:
            term, replica, tracker, proof = _fields(raw, 4)
            return cls(
                expect_int(term, "term"),
                _name(replica),
                Tracker.from_bytes(tracker),
                expect_bytes(proof, "proof", _dleq.PROOF_SIZE),
            )
        except ValueError as exc:
            raise ElectionError(f"malformed tracker submission: {exc}") from None


@dataclass(frozen=True, slots=True)
class Draw:
    """What the published shuffle and the beacon select for a term: the slot and its tracker."""

    term: int
    beacon: bytes
    slot: int
    tracker: Tracker


@dataclass(frozen=True, slots=True)
class Claim:
    """A replica's claim to lead `term`: it owns `slot` (DLEQ proof bound to term and beacon)."""

    term: int
    slot: int
    replica: str
    proof: bytes

    def to_bytes(self) -> bytes:
        return encode_canonical([_CLAIM_VERSION, self.term, self.slot, self.replica, self.proof])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Claim:
        try:
            version, term, slot, replica, proof = _fields(raw, 5)
            if version != _CLAIM_VERSION:
                raise ValueError(f"unsupported claim version {version!r}")
            return cls(
                expect_int(term, "term"),
                expect_int(slot, "slot"),
                _name(replica),
                expect_bytes(proof, "proof", _dleq.PROOF_SIZE),
            )
        except ValueError as exc:
            raise ElectionError(f"malformed claim: {exc}") from None


@dataclass(frozen=True, slots=True, repr=False)
class ReplicaKey:
    """A replica's election secret k and public key K = k*G. The secret is never shown."""

    name: str
    secret: bytes
    public_key: bytes

    def __repr__(self) -> str:
        return f"ReplicaKey(name={self.name!r}, public_key={self.public_key.hex()[:16]}...)"

    @classmethod
    def generate(cls, name: str, *, rng: RandomSource = secrets.token_bytes) -> ReplicaKey:
        """A fresh key for replica `name`."""
        return cls.from_secret(name, random_scalar(rng))

    @classmethod
    def from_secret(cls, name: str, secret: bytes) -> ReplicaKey:
        """Deterministic twin of `generate` (tests, vectors, a sealed key reloaded)."""
        k = scalar(secret, "replica secret")
        return cls(_name(name), k, base_mul(k))

    def tracker_for(
        self, term: int, *, rng: RandomSource = secrets.token_bytes
    ) -> TrackerSubmission:
        """A fresh tracker for `term` (new r every call) with its proof."""
        return self.tracker_with(term, random_scalar(rng), rng(64))

    def tracker_with(self, term: int, r: bytes, randomness: bytes) -> TrackerSubmission:
        """Deterministic twin of `tracker_for`: r and the proof randomness are given."""
        big_r = base_mul(scalar(r, "tracker scalar"))
        tracker = Tracker(big_r, mul(self.secret, big_r))
        proof = _dleq.prove_with_randomness(
            self.secret,
            (self.public_key, big_r, tracker.s),
            label=TRACKER_LABEL,
            context=_tracker_context(term, self.name),
            randomness=randomness,
        )
        return TrackerSubmission(term, self.name, tracker, proof.to_bytes())

    def recognises(self, tracker: Tracker) -> bool:
        """True when `tracker` is one of ours: k*R' == S' (constant-time compare)."""
        return hmac.compare_digest(mul(self.secret, tracker.r), tracker.s)

    def claim(self, draw: Draw, *, rng: RandomSource = secrets.token_bytes) -> Claim:
        """Claim the term of `draw`; `ElectionError` if its slot is not ours."""
        return self.claim_with(draw, rng(64))

    def claim_with(self, draw: Draw, randomness: bytes) -> Claim:
        """Deterministic twin of `claim`: the proof randomness is given."""
        if not self.recognises(draw.tracker):
            raise ElectionError(f"slot {draw.slot} of term {draw.term} is not {self.name!r}'s")
        return self.prove_claim_with(draw, randomness)

    def prove_claim_with(self, draw: Draw, randomness: bytes) -> Claim:
        """The claim proof without the ownership check (tests use it to forge claims)."""
        proof = _dleq.prove_with_randomness(
            self.secret,
            (self.public_key, draw.tracker.r, draw.tracker.s),
            label=CLAIM_LABEL,
            context=_claim_context(draw.term, draw.beacon, draw.slot, self.name),
            randomness=randomness,
        )
        return Claim(draw.term, draw.slot, self.name, proof.to_bytes())


class Registry:
    """Registered replicas: name -> K_i. Names and keys are unique; keys are valid points."""

    __slots__ = ("_by_key", "_by_name")

    def __init__(self) -> None:
        self._by_name: dict[str, bytes] = {}
        self._by_key: dict[bytes, str] = {}

    def register(self, name: str, public_key: bytes) -> None:
        """Add a replica; a second registration of the name or the key is refused."""
        check_registration(name, public_key)
        if name in self._by_name:
            raise ElectionError(f"replica {name!r} is already registered")
        if public_key in self._by_key:
            raise ElectionError(
                f"this public key is already registered by {self._by_key[public_key]!r}"
            )
        self._by_name[name] = public_key
        self._by_key[public_key] = name

    def key_of(self, name: str) -> bytes:
        """K_i of replica `name`; `ElectionError` if it never registered."""
        key = self._by_name.get(name)
        if key is None:
            raise ElectionError(f"replica {name!r} is not registered")
        return key

    def __len__(self) -> int:
        return len(self._by_name)


def check_registration(name: str, public_key: bytes) -> None:
    """A registration's name is printable and short; its key is a valid non-identity point."""
    _name(name)
    point(public_key, f"public key of {name!r}")


def verify_submission(submission: TrackerSubmission, public_key: bytes, term: int) -> None:
    """Refuse a tracker that is for another term or not proven well formed for `public_key`."""
    if submission.term != term:
        raise ElectionError(
            f"tracker of {submission.replica!r} is for term {submission.term}, not term {term}"
        )
    proof = _dleq.DleqProof.from_bytes(submission.proof)
    tracker = submission.tracker
    context = _tracker_context(term, submission.replica)
    if not _dleq.verify(
        proof, public_key, tracker.r, tracker.s, label=TRACKER_LABEL, context=context
    ):
        raise ElectionError(
            f"tracker proof of {submission.replica!r} for term {term} does not verify"
        )


def verify_claim(claim: Claim, draw: Draw, public_key: bytes) -> None:
    """Accept `claim` only if it is for this term and slot and proves ownership of that slot.

    `public_key` is the claimant's registered K_i, looked up by the caller from
    `claim.replica`. Raises `ElectionError` naming the first check that failed.
    """
    if claim.term != draw.term:
        raise ElectionError(f"claim is for term {claim.term}, not term {draw.term}")
    if claim.slot != draw.slot:
        raise ElectionError(
            f"claim names slot {claim.slot} but the beacon of term {draw.term} selects "
            f"slot {draw.slot}"
        )
    proof = _dleq.DleqProof.from_bytes(claim.proof)
    context = _claim_context(draw.term, draw.beacon, draw.slot, claim.replica)
    tracker = draw.tracker
    if not _dleq.verify(
        proof, public_key, tracker.r, tracker.s, label=CLAIM_LABEL, context=context
    ):
        raise ElectionError(
            f"claim proof of {claim.replica!r} for term {draw.term} does not verify "
            "(not the slot's owner, or a proof made for another term or beacon)"
        )


def beacon_for(term: int, seed: bytes, shuffle_digest: bytes) -> bytes:
    """The term's 64-byte beacon: SHA-512(label || CBOR[term, seed, shuffle digest]).

    `seed` is fixed when the term opens (the previous term's signed state root),
    before any tracker is shuffled; see docs/ARCHITECTURE.md for why.
    """
    message = encode_canonical([term, seed, shuffle_digest])
    return hashlib.sha512(_BEACON_LABEL + message).digest()


def slot_for(beacon: bytes, count: int) -> int:
    """The beacon as a 512-bit integer mod `count` (wide reduction: bias < count / 2^512)."""
    if count <= 0:
        raise ElectionError("no trackers were shuffled: there is no slot to select")
    if len(beacon) != BEACON_SIZE:
        raise ElectionError(f"a beacon is {BEACON_SIZE} bytes")
    return int.from_bytes(beacon, "big") % count


def _tracker_context(term: int, replica: str) -> list[object]:
    return [term, replica]


def _claim_context(term: int, beacon: bytes, slot: int, replica: str) -> list[object]:
    return [term, beacon, slot, replica]


def _fields(raw: bytes, count: int) -> list[object]:
    fields = decode_canonical(raw)
    if not isinstance(fields, list) or len(fields) != count:
        raise ValueError(f"expected a {count}-element array")
    return fields


def _name(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise ElectionError(f"a replica name is 1 to {MAX_NAME} printable characters")
    return value
