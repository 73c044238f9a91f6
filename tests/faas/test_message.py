"""The hop message: its associated data (v2 binary layout, injective) and its key derivation."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from otrace.errors import ChainViolation
from otrace.faas import HopKey, HopMetadata
from otrace.faas._message import associated_data
from tee._encoding import encode_canonical
from tee._kms import derive_hop_secret

NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)
AD_LABEL = b"otrace/faas/v2/hop\x00"


def parse_associated_data(data: bytes) -> tuple[HopMetadata, bytes]:
    """The inverse of `associated_data`, written from the layout in the module docstring."""
    assert data.startswith(AD_LABEL)
    head = struct.Struct(">16s32sIQBBB")
    rest = data[len(AD_LABEL) :]
    request_id, manifest_hash, step, expires, n_chain, n_name, n_tag = head.unpack_from(rest)
    rest = rest[head.size :]
    assert len(rest) == n_chain + n_name + n_tag
    chain, name, tag = rest[:n_chain], rest[n_chain : n_chain + n_name], rest[n_chain + n_name :]
    meta = HopMetadata(request_id, chain.decode(), step, name.decode(), manifest_hash, expires)
    return meta, tag


@given(
    request_id=st.binary(min_size=16, max_size=16),
    chain_id=NAMES,
    step=st.integers(min_value=0, max_value=2**32 - 1),
    next_function=NAMES,
    manifest_hash=st.binary(min_size=32, max_size=32),
    expires_at_ms=st.integers(min_value=0, max_value=2**64 - 1),
    previous_tag=st.sampled_from([b""]) | st.binary(min_size=16, max_size=16),
)
def test_associated_data_parses_back_to_exactly_its_hop(
    request_id: bytes,
    chain_id: str,
    step: int,
    next_function: str,
    manifest_hash: bytes,
    expires_at_ms: int,
    previous_tag: bytes,
) -> None:
    """Injective: the bytes determine the metadata and previous tag they were built from."""
    meta = HopMetadata(request_id, chain_id, step, next_function, manifest_hash, expires_at_ms)
    assert parse_associated_data(associated_data(meta, previous_tag)) == (meta, previous_tag)


def test_associated_data_layout_is_pinned() -> None:
    meta = HopMetadata(b"r" * 16, "bench", 2, "store", b"h" * 32, 1_800_000_000_000)
    expected = (
        b"otrace/faas/v2/hop\x00"
        + b"r" * 16
        + b"h" * 32
        + bytes.fromhex("00000002000001a3185c5000050510")
        + b"bench"
        + b"store"
        + b"t" * 16
    )
    assert associated_data(meta, b"t" * 16) == expected


@pytest.mark.parametrize(
    ("meta", "previous_tag"),
    [
        (HopMetadata(bytes(16), "c", 2**32, "f", bytes(32), 1), b""),
        (HopMetadata(bytes(16), "c", 0, "f", bytes(32), 2**64), b""),
        (HopMetadata(bytes(16), "c", -1, "f", bytes(32), 1), b""),
        (HopMetadata(bytes(16), "c" * 256, 0, "f", bytes(32), 1), b""),
        (HopMetadata(bytes(15), "c", 0, "f", bytes(32), 1), b""),
        (HopMetadata(bytes(16), "c", 0, "f", bytes(33), 1), b""),
        (HopMetadata(bytes(16), "c", 0, "f", bytes(32), 1), bytes(8)),
        (HopMetadata(bytes(16), "c", 0, "\udc80", bytes(32), 1), b""),
        (HopMetadata(bytes(16), "c", 0, "f" * 256, bytes(32), 1), b""),
        (HopMetadata(bytes(16), "c", 0, "f", bytes(32), 1), bytes(17)),
        (HopMetadata(bytes(16), "c", 0, "f", bytes(32), 1), bytes(32)),
    ],
    ids=[
        "step past u32",
        "expiry past u64",
        "negative step",
        "chain id too long",
        "short request id",
        "long manifest hash",
        "short previous tag",
        "not UTF-8",
        "function name too long",
        "long previous tag",
        "previous tag of a hash's size",
    ],
)
def test_associated_data_refuses_what_it_cannot_hold_exactly(
    meta: HopMetadata, previous_tag: bytes
) -> None:
    with pytest.raises(ChainViolation, match="cannot be authenticated"):
        associated_data(meta, previous_tag)


def test_metadata_map_lists_keys_in_canonical_order() -> None:
    keys = list(HopMetadata(bytes(16), "c", 0, "f", bytes(32), 1).to_map())
    assert keys == sorted(keys, key=lambda key: (len(key.encode()), key.encode()))


def test_hop_key_is_hkdf_of_chain_secret_request_step_and_function() -> None:
    """The spec's HKDF(K_chain, request_id, step, H(function)), spelled out with the library."""
    chain_secret, measurement, request_id = b"c" * 32, b"m" * 32, b"r" * 16
    prk = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"otrace/tee/v1/chain-hop/" + (2).to_bytes(4, "big") + measurement,
    ).derive(chain_secret)
    okm = HKDFExpand(
        algorithm=hashes.SHA256(), length=48, info=b"otrace/faas/v1/hop-key" + request_id
    ).derive(prk)
    meta = HopMetadata(request_id, "c", 2, "f", bytes(32), 1)
    hop_secret = derive_hop_secret(chain_secret, 2, measurement)
    assert hop_secret == prk
    key = HopKey(hop_secret, request_id)
    sealed = key.seal(meta, b"", {"args": 1}, bytes(12))
    assert key.key_id == okm[32:]
    assert sealed.ciphertext == AESGCM(okm[:32]).encrypt(
        bytes(12), encode_canonical({"args": 1}), associated_data(meta, b"")
    )


@pytest.mark.parametrize(
    ("secret", "request_id"),
    [(b"s" * 32, b"R" * 16), (b"S" * 32, b"r" * 16), (b"s" * 32, b"r" * 15)],
    ids=["other request", "other hop secret", "request id cut short"],
)
def test_a_hop_key_opens_only_its_own_request_and_hop(secret: bytes, request_id: bytes) -> None:
    meta = HopMetadata(b"r" * 16, "c", 0, "f", bytes(32), 1)
    sealed = HopKey(b"s" * 32, b"r" * 16).seal(meta, b"", {"args": 1}, bytes(12))
    other = HopKey(secret, request_id)
    with pytest.raises(ChainViolation, match="splice"):
        other.open(sealed)
