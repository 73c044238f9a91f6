"""Bucket codec: fixed-size AES-GCM buckets chained into a Merkle tree.

A bucket's plaintext is `left_digest | right_digest | Z block ids (u32) | Z blocks`.
Its row holds `nonce | ciphertext | tag`, with associated data binding the
tree id, the bucket index and the write version, so a bucket moved to another
index or another tree fails to decrypt.

Each bucket records the digests of its two children; the root's digest lives in
the sealed client state. A digest is SHA-256 over (index, version, nonce, tag):
the GCM tag is a MAC over the whole ciphertext under a key the storage lacks,
so committing to it commits to the bucket's contents without hashing 16 KiB
per bucket. A flipped bit fails the tag; a swapped bucket fails the index in
the associated data; an older copy of a bucket fails its parent's digest.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oram_store._params import EMPTY_SLOT, OramParams
from otrace.errors import ConfigError, IntegrityError

__all__ = ["DIGEST_SIZE", "EMPTY_DIGEST", "Bucket", "BucketCodec"]

DIGEST_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
EMPTY_DIGEST = bytes(DIGEST_SIZE)  # children of leaves
_IDX_VERSION = struct.Struct("<QQ")


@dataclass(slots=True)
class Bucket:
    """A decrypted bucket: block ids (EMPTY_SLOT when free), their data, child digests."""

    ids: list[int]
    data: list[bytes]
    left: bytes
    right: bytes


class BucketCodec:
    """Encrypts, authenticates and parses buckets of one tree."""

    def __init__(self, params: OramParams, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError("the ORAM bucket key must be 32 bytes")
        self._aead = AESGCM(key)
        self._z = params.slots
        self._b = params.block_size
        self._ids = struct.Struct(f"<{params.slots}I")
        self._ad_prefix = b"otrace-oram-bucket\x00" + params.tree_id.encode() + b"\x00"
        self._zero = bytes(params.block_size)
        self.plaintext_size = 2 * DIGEST_SIZE + self._ids.size + params.slots * params.block_size
        self.blob_size = NONCE_SIZE + self.plaintext_size + TAG_SIZE

    def empty(self, left: bytes = EMPTY_DIGEST, right: bytes = EMPTY_DIGEST) -> Bucket:
        return Bucket([EMPTY_SLOT] * self._z, [self._zero] * self._z, left, right)

    def seal(self, idx: int, version: int, bucket: Bucket, nonce: bytes) -> tuple[bytes, bytes]:
        """Returns (blob, digest) for `bucket` written at `idx` with `version`."""
        plaintext = b"".join((bucket.left, bucket.right, self._ids.pack(*bucket.ids), *bucket.data))
        blob = nonce + self._aead.encrypt(nonce, plaintext, self._ad(idx, version))
        return blob, self.digest(idx, version, blob)

    def seal_plaintext(
        self, idx: int, version: int, plaintext: bytes, nonce: bytes
    ) -> tuple[bytes, bytes]:
        """Like `seal` for a prebuilt plaintext (bulk initialisation's hot loop)."""
        blob = nonce + self._aead.encrypt(nonce, plaintext, self._ad(idx, version))
        return blob, self.digest(idx, version, blob)

    def empty_plaintext(self, left: bytes, right: bytes) -> bytes:
        ids = self._ids.pack(*([EMPTY_SLOT] * self._z))
        return b"".join((left, right, ids, bytes(self._z * self._b)))

    def open(self, idx: int, version: int, blob: bytes, expected_digest: bytes) -> Bucket:
        """Verifies `blob` against its parent's digest, then decrypts and parses it."""
        if len(blob) != self.blob_size:
            raise IntegrityError(f"ORAM bucket {idx} has the wrong size: storage was tampered with")
        if not hmac.compare_digest(self.digest(idx, version, blob), expected_digest):
            raise IntegrityError(
                f"ORAM bucket {idx} does not match its parent's digest: "
                "tampered, swapped or stale storage"
            )
        try:
            plaintext = self._aead.decrypt(
                blob[:NONCE_SIZE], blob[NONCE_SIZE:], self._ad(idx, version)
            )
        except InvalidTag:
            raise IntegrityError(
                f"ORAM bucket {idx} failed authentication: storage was tampered with"
            ) from None
        return self._parse(plaintext)

    def digest(self, idx: int, version: int, blob: bytes) -> bytes:
        return hashlib.sha256(
            _IDX_VERSION.pack(idx, version) + blob[:NONCE_SIZE] + blob[-TAG_SIZE:]
        ).digest()

    def _ad(self, idx: int, version: int) -> bytes:
        return self._ad_prefix + _IDX_VERSION.pack(idx, version)

    def _parse(self, plaintext: bytes) -> Bucket:
        view = memoryview(plaintext)
        ids_end = 2 * DIGEST_SIZE + self._ids.size
        ids = list(self._ids.unpack_from(view, 2 * DIGEST_SIZE))
        b = self._b
        data = [
            bytes(view[ids_end + i * b : ids_end + (i + 1) * b])
            if ids[i] != EMPTY_SLOT
            else self._zero
            for i in range(self._z)
        ]
        return Bucket(
            ids, data, bytes(view[:DIGEST_SIZE]), bytes(view[DIGEST_SIZE : 2 * DIGEST_SIZE])
        )
