"""The attested channel: keys bound to the quote; replay, reordering, truncation, forgery."""

from __future__ import annotations

import re

import pytest

from otrace.errors import ChannelError
from tee import AttestedChannel, ChannelKey, Platform, accept_enclave, open_channel
from tests.tee.conftest import MEASUREMENT


def _pair(platform: Platform, identity, make_verifier) -> tuple[AttestedChannel, AttestedChannel]:
    verifier = make_verifier()
    nonce = verifier.challenge()
    hello = open_channel(platform, identity, nonce)
    verified = verifier.verify(hello.quote, public_key=hello.public_key, nonce=nonce)
    verifier_public, server = accept_enclave(verified.public_key, verified.quote, nonce)
    return hello.finish(verifier_public, nonce), server


def test_records_flow_both_ways(platform, identity, make_verifier) -> None:
    enclave, server = _pair(platform, identity, make_verifier)
    for index in range(3):
        assert server.open(enclave.seal(b"up %d" % index)) == b"up %d" % index
        assert enclave.open(server.seal(b"down")) == b"down"


def test_directions_use_different_keys(platform, identity, make_verifier) -> None:
    enclave, _ = _pair(platform, identity, make_verifier)
    with pytest.raises(ChannelError, match=r"failed authentication"):
        enclave.open(enclave.seal(b"reflected back"))


def test_replayed_record_is_refused(platform, identity, make_verifier) -> None:
    enclave, server = _pair(platform, identity, make_verifier)
    record = enclave.seal(b"release oram_key")
    server.open(record)
    with pytest.raises(
        ChannelError, match=re.escape("record replayed: sequence number 0 was already received")
    ):
        server.open(record)
    assert server.open(enclave.seal(b"next")) == b"next"  # the channel keeps working


def test_reordered_record_is_refused(platform, identity, make_verifier) -> None:
    enclave, server = _pair(platform, identity, make_verifier)
    first, second = enclave.seal(b"1"), enclave.seal(b"2")
    with pytest.raises(
        ChannelError, match=r"^record out of order: expected sequence number 0, got 1$"
    ):
        server.open(second)
    assert server.open(first) == b"1"
    assert server.open(second) == b"2"


def test_truncated_record_is_refused(platform, identity, make_verifier) -> None:
    enclave, server = _pair(platform, identity, make_verifier)
    record = enclave.seal(b"payload")
    with pytest.raises(
        ChannelError, match=r"^record truncated: 10 bytes is shorter than a record$"
    ):
        server.open(record[:10])
    with pytest.raises(ChannelError, match=r"failed authentication"):
        server.open(record[:-1])


def test_forged_record_is_refused(platform, identity, make_verifier) -> None:
    enclave, server = _pair(platform, identity, make_verifier)
    record = bytearray(enclave.seal(b"payload"))
    record[12] ^= 0x01
    with pytest.raises(
        ChannelError, match=r"^record failed authentication \(forged or corrupted\)$"
    ):
        server.open(bytes(record))


def test_man_in_the_middle_key_cannot_read(platform, identity, make_verifier) -> None:
    # The attacker relays the genuine quote but answers with its own key: the keys differ.
    verifier = make_verifier()
    nonce = verifier.challenge()
    hello = open_channel(platform, identity, nonce)
    verified = verifier.verify(hello.quote, public_key=hello.public_key, nonce=nonce)
    _, server = accept_enclave(verified.public_key, verified.quote, nonce)
    attacker = ChannelKey.generate()
    enclave = hello.finish(attacker.public_bytes, nonce)
    with pytest.raises(ChannelError, match=r"failed authentication"):
        enclave.open(server.seal(b"secret"))


def test_context_is_bound_into_the_keys(platform, identity, make_verifier) -> None:
    verifier = make_verifier()
    nonce = verifier.challenge()
    hello = open_channel(platform, identity, nonce)
    verifier.verify(hello.quote, public_key=hello.public_key, nonce=nonce)
    peer, server = accept_enclave(hello.public_key, hello.quote, nonce, b"names: oram_key")
    enclave = hello.finish(peer, nonce, b"names: state_key")
    with pytest.raises(ChannelError, match=r"failed authentication"):
        enclave.open(server.seal(b"secret"))


def test_low_order_peer_key_is_refused(platform, identity) -> None:
    hello = open_channel(platform, identity, b"\x01" * 32)
    with pytest.raises(ChannelError, match=r"malformed or of low order"):
        hello.finish(bytes(32), b"\x01" * 32)


def test_deterministic_keys_give_identical_channels() -> None:
    platform = Platform.from_secrets(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    identity = platform.identity(MEASUREMENT, 1)
    nonce = b"\x04" * 32
    enclave_key, server_key = (ChannelKey.from_private_bytes(bytes([i]) * 32) for i in (5, 6))
    records = []
    for _ in range(2):
        hello = open_channel(platform, identity, nonce, key=enclave_key)
        _, server = accept_enclave(hello.public_key, hello.quote, nonce, key=server_key)
        records.append(server.seal(b"vector"))
    assert records[0] == records[1]
