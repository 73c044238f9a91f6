"""Trapdoors and EDB slots: the only keyword-derived values that leave a key holder.

    trapdoor  K_w = HMAC-SHA256(K_index, "otrace/query/v1/keyword\\0" || w)
    locator   t   = HMAC-SHA256(K_w, "otrace/query/v2/slot\\0" || segment id)
    bucket    = first 8 bytes of t mod (the segment's bucket count, a power of two)
    tag       = bytes 8..24 of t (identifies the keyword inside its bucket)

The analyst's client computes trapdoors with the index key from its credential
and sends them (never keywords) over the attested session; the enclave derives
the locators of the index segments a query covers. Segment ids are never
reused, so a row written after a search sits at a locator no search has
computed yet (forward privacy).
"""

from __future__ import annotations

import hashlib
import hmac

from otrace.errors import InvalidRequest

__all__ = ["TAG_SIZE", "TRAPDOOR_SIZE", "Locator", "Trapdoors", "locate", "trapdoor_for"]

TRAPDOOR_SIZE = 32
TAG_SIZE = 16
_KEYWORD = b"otrace/query/v1/keyword\x00"
_SLOT = b"otrace/query/v2/slot\x00"


def trapdoor_for(index_key: bytes, keyword: str) -> bytes:
    """The trapdoor of `keyword`; raises `InvalidRequest` for text that is not valid Unicode."""
    return Trapdoors(index_key)(keyword)


class Trapdoors:
    """`trapdoor_for` under one key, keyed once (an HMAC state copied per keyword is
    about twice as fast as keying HMAC for every keyword: the ingest hot path)."""

    __slots__ = ("_base",)

    def __init__(self, index_key: bytes) -> None:
        self._base = hmac.new(index_key, _KEYWORD, hashlib.sha256)

    def __repr__(self) -> str:
        return "Trapdoors()"

    def __call__(self, keyword: str) -> bytes:
        try:
            raw = keyword.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"search term {keyword!r} is not valid UTF-8 text") from None
        h = self._base.copy()
        h.update(raw)
        return h.digest()


def locate(trapdoor: bytes, segment: int, buckets: int) -> tuple[int, bytes]:
    """(bucket, tag) of a keyword's postings in one index segment of `buckets` buckets."""
    return Locator(segment, buckets)(trapdoor)


class Locator:
    """`locate` for one segment, its message built once (called per keyword at ingest)."""

    __slots__ = ("_mask", "_message")

    def __init__(self, segment: int, buckets: int) -> None:
        self._message = _SLOT + segment.to_bytes(8, "big")
        self._mask = buckets - 1

    def __call__(self, trapdoor: bytes) -> tuple[int, bytes]:
        t = hmac.digest(trapdoor, self._message, "sha256")
        return int.from_bytes(t[:8], "big") & self._mask, t[8 : 8 + TAG_SIZE]
