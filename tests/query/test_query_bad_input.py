"""The query API under bad input: malformed frames, replayed or forged records, no login.
Each is refused with its own error, and the node keeps answering honest clients."""

from __future__ import annotations

import grpc
import pytest

from otrace.errors import AuthenticationError, ChannelError, InvalidRequest
from query import AnalystCredential, QueryClient
from query._protocol import CHANNEL_CONTEXT, SESSION_METHOD, encode
from tee import Verifier, accept_enclave
from tests.query.conftest import Loaded


def _raw_session(loaded: Loaded, frames: list[bytes]) -> grpc.RpcError:
    with grpc.insecure_channel(loaded.endpoint) as channel:
        call = channel.stream_stream(SESSION_METHOD)
        with pytest.raises(grpc.RpcError) as caught:
            list(call(iter(frames), timeout=10))
    return caught.value  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("frames", "code", "message"),
    [
        ([b"\xff\x00garbage"], grpc.StatusCode.INVALID_ARGUMENT, "malformed query handshake"),
        ([encode({"nonce": b"short"})], grpc.StatusCode.INVALID_ARGUMENT, "nonce must be 32"),
        ([encode({"hello": 1})], grpc.StatusCode.INVALID_ARGUMENT, "nonce must be 32"),
    ],
)
def test_malformed_handshakes_are_invalid_argument(
    loaded: Loaded, frames: list[bytes], code: grpc.StatusCode, message: str
) -> None:
    error = _raw_session(loaded, frames)
    assert error.code() == code  # type: ignore[attr-defined]
    assert message in error.details()  # type: ignore[attr-defined]


def test_a_replayed_record_ends_the_session_and_honest_clients_go_on(loaded: Loaded) -> None:
    client = QueryClient.connect(loaded.endpoint, key_file=loaded.node.credential_path)
    try:
        assert client._channel is not None
        sealed = client._channel.seal(encode({"op": "services"}))
        client._exchange({"record": sealed})
        with pytest.raises(ChannelError, match="record replayed"):
            client._exchange({"record": sealed})
    finally:
        client.close()
    with QueryClient.connect(loaded.endpoint, key_file=loaded.node.credential_path) as honest:
        assert honest.services() == ["cart", "checkout", "payments"]


def test_a_forged_record_is_refused(loaded: Loaded) -> None:
    client = QueryClient.connect(loaded.endpoint, key_file=loaded.node.credential_path)
    try:
        assert client._channel is not None
        sealed = bytearray(client._channel.seal(encode({"op": "services"})))
        sealed[-1] ^= 1
        with pytest.raises(ChannelError, match="failed authentication"):
            client._exchange({"record": bytes(sealed)})
    finally:
        client.close()


def test_a_session_without_login_is_refused(loaded: Loaded) -> None:
    client = QueryClient(AnalystCredential.load(loaded.node.credential_path), loaded.endpoint)
    try:
        # Open the channel by hand and send a request where the login belongs.
        cred = client.credential
        verifier = Verifier(
            trusted_platform_keys=[cred.platform_key],
            allowed_measurements=cred.measurements,
            allow_simulated=True,
        )
        nonce = verifier.challenge()
        stream = client._grpc.stream_stream(SESSION_METHOD)
        client._inbox = iter(stream(iter(client._outbox.get, None)))
        hello = client._exchange({"nonce": nonce})
        verifier.verify(hello["quote"], public_key=hello["public_key"], nonce=nonce)
        mine, channel = accept_enclave(hello["public_key"], hello["quote"], nonce, CHANNEL_CONTEXT)
        request = channel.seal(encode({"op": "services"}))
        with pytest.raises(AuthenticationError, match="did not start with an analyst login"):
            client._exchange({"public_key": mine, "record": request})
    finally:
        client.close()


def test_an_unknown_request_gets_an_error_reply_and_the_session_goes_on(loaded: Loaded) -> None:
    with QueryClient.connect(loaded.endpoint, key_file=loaded.node.credential_path) as client:
        with pytest.raises(InvalidRequest, match="unknown query operation 'drop_tables'"):
            client._request({"op": "drop_tables"})
        with pytest.raises(InvalidRequest, match="a trapdoor must be 32 bytes"):
            client._request({"op": "get_trace", "trapdoor": b"short"})
        assert client.services() == ["cart", "checkout", "payments"]
