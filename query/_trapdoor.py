"""Trapdoors and EDB labels: the only keyword-derived values that leave a key holder.

    trapdoor  K_w = HMAC-SHA256(K_index, "otrace/query/v1/keyword\\0" || w)
    label     HMAC-SHA256(K_w, "otrace/query/v1/label\\0" || segment id)[:16]

The analyst's client computes trapdoors with the index key from its credential
and sends them (never keywords) over the attested session; the enclave derives
the labels of the index segments a query covers. Segment ids are never reused,
so the label of a row written after a search is one no search has computed yet
(forward privacy).
"""

from __future__ import annotations

import hmac

from otrace.errors import InvalidRequest

__all__ = ["LABEL_SIZE", "TRAPDOOR_SIZE", "label_for", "trapdoor_for"]

TRAPDOOR_SIZE = 32
LABEL_SIZE = 16
_KEYWORD = b"otrace/query/v1/keyword\x00"
_LABEL = b"otrace/query/v1/label\x00"


def trapdoor_for(index_key: bytes, keyword: str) -> bytes:
    """The trapdoor of `keyword`; raises `InvalidRequest` for text that is not valid Unicode."""
    try:
        raw = keyword.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"search term {keyword!r} is not valid UTF-8 text") from None
    return hmac.digest(index_key, _KEYWORD + raw, "sha256")


def label_for(trapdoor: bytes, segment: int) -> bytes:
    """The EDB label of a keyword's postings row in one index segment."""
    return hmac.digest(trapdoor, _LABEL + segment.to_bytes(8, "big"), "sha256")[:LABEL_SIZE]
