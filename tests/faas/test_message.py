"""The hop associated data: the fast encoding must be byte-for-byte canonical CBOR."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from otrace.faas import HopMetadata
from otrace.faas._message import associated_data
from tee._encoding import encode_canonical

NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)
# Up to and past 2**64, where CBOR switches to a bignum tag.
INTS = st.integers(min_value=0, max_value=2**70)


@given(
    request_id=st.binary(min_size=16, max_size=16),
    chain_id=NAMES,
    step=INTS,
    next_function=NAMES,
    manifest_hash=st.binary(min_size=32, max_size=32),
    expires_at_ms=INTS,
    previous_tag=st.sampled_from([b""]) | st.binary(min_size=16, max_size=16),
)
def test_associated_data_is_the_canonical_encoding(
    request_id: bytes,
    chain_id: str,
    step: int,
    next_function: str,
    manifest_hash: bytes,
    expires_at_ms: int,
    previous_tag: bytes,
) -> None:
    meta = HopMetadata(request_id, chain_id, step, next_function, manifest_hash, expires_at_ms)
    expected = b"otrace/faas/v1/hop\x00" + encode_canonical([meta.to_map(), previous_tag])
    assert associated_data(meta, previous_tag) == expected


def test_metadata_map_lists_keys_in_canonical_order() -> None:
    keys = list(HopMetadata(bytes(16), "c", 0, "f", bytes(32), 1).to_map())
    assert keys == sorted(keys, key=lambda key: (len(key.encode()), key.encode()))
