"""Chaum-Pedersen proofs that two discrete logarithms are equal (DLEQ), Fiat-Shamir style.

Statement: X = x*G and Y = x*H for the same secret x, with G the ristretto255
base point. The prover picks a nonce w, commits A = w*G and B = w*H, and answers

    c = SHA-512(label || CBOR[context, X, H, Y, A, B]) mod L,   z = w + c*x mod L.

The proof is `c || z` (64 bytes). The verifier recomputes A = z*G - c*X and
B = z*H - c*Y and accepts when the challenge it derives equals `c`
(`hmac.compare_digest`). The label separates uses (tracker proofs, term claims)
and `context` carries what the proof is bound to (term, beacon, slot), so a proof
made for one purpose or one term never verifies for another.

The nonce is hedged: w = SHA-512(nonce label || x || 64 random bytes || statement),
so a weak random source alone does not leak x; `prove_with_randomness` is the
deterministic twin.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from otrace.errors import ElectionError
from tee._encoding import encode_canonical
from tee.ssle._group import (
    SCALAR_SIZE,
    RandomSource,
    base_mul,
    hash_to_scalar,
    mul,
    scalar,
    scalar_add,
    scalar_from_wide,
    scalar_mul,
    sub,
)

__all__ = ["PROOF_SIZE", "DleqProof", "prove", "prove_with_randomness", "verify"]

PROOF_SIZE = 2 * SCALAR_SIZE
_NONCE_LABEL = b"otrace/ssle/v1/dleq-nonce\x00"


@dataclass(frozen=True, slots=True)
class DleqProof:
    """A Chaum-Pedersen proof: challenge `c` and response `z` (public values)."""

    challenge: bytes
    response: bytes

    def to_bytes(self) -> bytes:
        """`c || z`, 64 bytes."""
        return self.challenge + self.response

    @classmethod
    def from_bytes(cls, raw: object) -> DleqProof:
        """Parse `c || z`; non-canonical scalars raise `ElectionError`."""
        if not isinstance(raw, bytes) or len(raw) != PROOF_SIZE:
            raise ElectionError(f"a DLEQ proof is {PROOF_SIZE} bytes")
        c = scalar(raw[:SCALAR_SIZE], "proof challenge", allow_zero=True)
        z = scalar(raw[SCALAR_SIZE:], "proof response", allow_zero=True)
        return cls(c, z)


def prove(
    secret: bytes,
    statement: tuple[bytes, bytes, bytes],
    *,
    label: bytes,
    context: object,
    rng: RandomSource,
) -> DleqProof:
    """Prove log_G(X) == log_H(Y) for `statement` = (X, H, Y) = (x*G, H, x*H), x = `secret`.

    The caller passes X and Y it already holds (a public key, a tracker's S)
    instead of having them recomputed; a wrong statement gives a proof that
    does not verify.
    """
    return prove_with_randomness(
        secret, statement, label=label, context=context, randomness=rng(64)
    )


def prove_with_randomness(
    secret: bytes,
    statement: tuple[bytes, bytes, bytes],
    *,
    label: bytes,
    context: object,
    randomness: bytes,
) -> DleqProof:
    """Deterministic twin of `prove`: the 64 bytes of nonce randomness are given."""
    if len(randomness) != 64:
        raise ValueError("a DLEQ proof takes 64 bytes of randomness")
    x_point, h, y_point = statement
    encoded = encode_canonical([context, x_point, h, y_point])
    w = scalar_from_wide(hashlib.sha512(_NONCE_LABEL + secret + randomness + encoded).digest())
    a, b = base_mul(w), mul(w, h)
    c = _challenge(label, context, x_point, h, y_point, a, b)
    z = scalar_add(w, scalar_mul(c, secret))
    return DleqProof(c, z)


def verify(
    proof: DleqProof, x_point: bytes, h: bytes, y_point: bytes, *, label: bytes, context: object
) -> bool:
    """True when `proof` shows log_G(X) == log_H(Y) under `label` and `context`.

    The points must already be validated (`_group.point`); the answer is a bool
    so callers raise the error that names what they were checking.
    """
    a = sub(base_mul(proof.response), mul(proof.challenge, x_point))
    b = sub(mul(proof.response, h), mul(proof.challenge, y_point))
    expected = _challenge(label, context, x_point, h, y_point, a, b)
    return hmac.compare_digest(expected, proof.challenge)


def _challenge(
    label: bytes, context: object, x: bytes, h: bytes, y: bytes, a: bytes, b: bytes
) -> bytes:
    return hash_to_scalar(label, encode_canonical([context, x, h, y, a, b]))
