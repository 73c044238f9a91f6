"""The ristretto255 group, through libsodium (the `rbcl` bindings); no arithmetic here.

Points are 32-byte canonical ristretto255 encodings, scalars 32-byte
little-endian integers reduced modulo the group order L. Every point that comes
from outside goes through `point` (canonical, on the curve, not the identity);
every scalar through `scalar` (canonical, non-zero). Random scalars are a wide
reduction of 64 random bytes, so their bias is about 2^-259.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import rbcl

from otrace.errors import ElectionError

__all__ = [
    "IDENTITY",
    "POINT_SIZE",
    "SCALAR_SIZE",
    "RandomSource",
    "add",
    "base_mul",
    "hash_to_scalar",
    "mul",
    "point",
    "random_scalar",
    "scalar",
    "scalar_add",
    "scalar_from_wide",
    "scalar_mul",
    "sub",
]

POINT_SIZE = 32
SCALAR_SIZE = 32
IDENTITY = bytes(POINT_SIZE)
_ZERO = bytes(SCALAR_SIZE)

RandomSource = Callable[[int], bytes]
"""`n -> n random bytes` (os.urandom, secrets.token_bytes, or a seeded test double)."""


def point(raw: object, what: str) -> bytes:
    """`raw` as a canonical ristretto255 point other than the identity, else `ElectionError`."""
    if not isinstance(raw, bytes) or len(raw) != POINT_SIZE:
        raise ElectionError(f"{what} must be a {POINT_SIZE}-byte ristretto255 point")
    if hmac.compare_digest(raw, IDENTITY) or not rbcl.crypto_core_ristretto255_is_valid_point(raw):
        raise ElectionError(f"{what} is not a valid ristretto255 point (or is the identity)")
    return raw


def scalar(raw: object, what: str, *, allow_zero: bool = False) -> bytes:
    """`raw` as a canonical scalar (non-zero unless allowed), else `ElectionError`.

    The message names `what`, never the value (it may be a secret).
    """
    if not isinstance(raw, bytes) or len(raw) != SCALAR_SIZE:
        raise ElectionError(f"{what} must be a {SCALAR_SIZE}-byte scalar")
    reduced = rbcl.crypto_core_ristretto255_scalar_reduce(raw + _ZERO)
    zero = hmac.compare_digest(raw, _ZERO)
    if not hmac.compare_digest(reduced, raw) or (zero and not allow_zero):
        raise ElectionError(f"{what} is not a canonical non-zero scalar")
    return raw


def scalar_from_wide(wide: bytes) -> bytes:
    """64 bytes reduced modulo L (the unbiased way to make a scalar from random or hash bytes)."""
    if len(wide) != 64:
        raise ValueError("a wide reduction needs 64 bytes")
    return bytes(rbcl.crypto_core_ristretto255_scalar_reduce(wide))


def random_scalar(rng: RandomSource) -> bytes:
    """A uniformly random non-zero scalar from 64 bytes of `rng`."""
    while True:
        value = scalar_from_wide(rng(64))
        if not hmac.compare_digest(value, _ZERO):
            return value


def hash_to_scalar(label: bytes, message: bytes) -> bytes:
    """SHA-512(label || message) reduced modulo L (Fiat-Shamir challenges)."""
    return scalar_from_wide(hashlib.sha512(label + message).digest())


def base_mul(s: bytes) -> bytes:
    """s*G; zero gives the identity."""
    return bytes(rbcl.crypto_scalarmult_ristretto255_base_allow_scalar_zero(s))


def mul(s: bytes, p: bytes) -> bytes:
    """s*P for a valid point P; zero gives the identity."""
    return bytes(rbcl.crypto_scalarmult_ristretto255_allow_scalar_zero(s, p))


def add(p: bytes, q: bytes) -> bytes:
    """P + Q."""
    return bytes(rbcl.crypto_core_ristretto255_add(p, q))


def sub(p: bytes, q: bytes) -> bytes:
    """P - Q."""
    return bytes(rbcl.crypto_core_ristretto255_sub(p, q))


def scalar_add(a: bytes, b: bytes) -> bytes:
    """a + b mod L."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_add(a, b))


def scalar_mul(a: bytes, b: bytes) -> bytes:
    """a * b mod L."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_mul(a, b))
