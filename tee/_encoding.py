"""Canonical CBOR for every structure otrace signs, hashes or authenticates.

Signed and hashed bytes must have exactly one encoding, so decoding is strict:
the input must be the canonical encoding of what it decodes to (no trailing
bytes, no alternative integer or map-order forms). Callers translate `ValueError`
into the error of their layer (`AttestationError`, `IntegrityError`, ...).
"""

from __future__ import annotations

from typing import Any

import cbor2

__all__ = [
    "decode_canonical",
    "encode_canonical",
    "expect_bytes",
    "expect_int",
    "expect_map",
]


def encode_canonical(value: object) -> bytes:
    """The canonical CBOR encoding of `value` (RFC 8949 section 4.2.1 ordering)."""
    return cbor2.dumps(value, canonical=True)


def decode_canonical(data: bytes) -> Any:
    """Decode `data`, refusing anything that is not the canonical form of its value."""
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORError, ValueError, TypeError, EOFError, RecursionError) as exc:
        raise ValueError("not valid CBOR") from exc
    try:
        canonical = cbor2.dumps(value, canonical=True)
    except (cbor2.CBORError, ValueError, TypeError) as exc:
        raise ValueError("not re-encodable CBOR") from exc
    if canonical != data:
        raise ValueError("not canonical CBOR (trailing or non-canonical bytes)")
    return value


def expect_map(value: object, keys: frozenset[str]) -> dict[str, Any]:
    """`value` as a dict with exactly `keys`, else `ValueError`."""
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError(f"expected a map with keys {sorted(keys)}")
    return value


def expect_bytes(value: object, what: str, length: int | None = None) -> bytes:
    """`value` as bytes (of `length` if given), else `ValueError` naming `what`."""
    if not isinstance(value, bytes) or (length is not None and len(value) != length):
        size = f" of {length} bytes" if length is not None else ""
        raise ValueError(f"{what} must be a byte string{size}")
    return value


def expect_int(value: object, what: str) -> int:
    """`value` as a non-negative int (bools excluded), else `ValueError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value
