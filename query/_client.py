"""The analyst's side of the query API: attest the node, log in, send trapdoors.

    with QueryClient.connect(key_file=Path("otrace-data/analyst.cred")) as client:
        answer = client.search(service="checkout", since_ns=3600 * 10**9)

Keywords never leave this process: every predicate becomes a trapdoor under
the credential's index key before it is sent, inside the attested channel.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from otrace import errors
from otrace.errors import AttestationError, InvalidRequest, OTraceError
from query._credential import AnalystCredential
from query._keywords import (
    attr_keyword,
    duration_cover,
    name_keyword,
    service_keyword,
    time_cover,
    trace_keyword,
)
from query._protocol import CHANNEL_CONTEXT, SESSION_METHOD, decode, encode, login_proof
from query._server import MAX_MESSAGE
from query._trapdoor import trapdoor_for
from tee import AttestedChannel, Verifier, accept_enclave, error_from_rpc

__all__ = ["QueryClient", "TraceAnswer"]

_MAX_COVER = 512
_FOREVER = 2**63 - 1


@dataclass(frozen=True, slots=True)
class TraceAnswer:
    data: TracesData = field(repr=False)
    truncated: bool
    reads: int


class QueryClient:
    """One attested, authenticated session with a node's query API. Use as a context manager."""

    def __init__(
        self,
        credential: AnalystCredential,
        endpoint: str | None = None,
        *,
        measurements: Sequence[bytes] = (),
        timeout: float = 60.0,
    ) -> None:
        self.credential = credential
        self.endpoint = endpoint or credential.endpoint
        self._measurements = tuple(measurements) or credential.measurements
        self._timeout = timeout
        self._grpc = grpc.insecure_channel(
            self.endpoint,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._inbox: Iterator[bytes] | None = None
        self._channel: AttestedChannel | None = None

    def __repr__(self) -> str:
        return f"QueryClient(endpoint={self.endpoint!r}, analyst={self.credential.name!r})"

    @classmethod
    def connect(
        cls,
        endpoint: str | None = None,
        *,
        key_file: Path | str,
        measurements: Sequence[bytes] = (),
        timeout: float = 60.0,
    ) -> QueryClient:
        """Loads the credential, attests the node and logs in."""
        client = cls(
            AnalystCredential.load(Path(key_file)),
            endpoint,
            measurements=measurements,
            timeout=timeout,
        )
        try:
            client.open()
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._outbox.put(None)
        self._grpc.close()

    # --------------------------------------------------------------- session

    def open(self) -> None:
        cred = self.credential
        verifier = Verifier(
            trusted_platform_keys=[cred.platform_key],
            allowed_measurements=self._measurements,
            allow_simulated=True,  # the enclave is emulated; SECURITY.md says what that means
        )
        nonce = verifier.challenge()
        stream = self._grpc.stream_stream(SESSION_METHOD)
        self._inbox = iter(stream(iter(self._outbox.get, None), timeout=None))
        hello = self._exchange({"nonce": nonce})
        quote, enclave_pk = bytes(hello["quote"]), bytes(hello["public_key"])
        try:
            verifier.verify(quote, public_key=enclave_pk, nonce=nonce)
        except AttestationError as exc:
            raise AttestationError(
                f"the node at {self.endpoint} failed attestation: {exc}. If the node runs a "
                "different otrace build, compare `otrace attest` on the node and pass "
                "--measurement HEX"
            ) from None
        client_pk, self._channel = accept_enclave(enclave_pk, quote, nonce, CHANNEL_CONTEXT)
        proof = login_proof(cred.auth_key, quote, enclave_pk, client_pk, nonce)
        login = self._channel.seal(encode({"analyst": cred.name, "proof": proof}))
        reply = self._channel.open(
            bytes(self._exchange({"public_key": client_pk, "record": login})["record"])
        )
        if decode(reply, "login reply").get("ok") is not True:
            raise errors.AuthenticationError("the node did not accept the login")

    def _exchange(self, frame: dict[str, Any]) -> dict[str, Any]:
        assert self._inbox is not None
        self._outbox.put(encode(frame))
        try:
            return decode(next(self._inbox), "reply")
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAVAILABLE:
                detail = exc.details() or ""
                if ": " not in detail or detail.startswith(("failed to connect", "DNS")):
                    raise errors.UnavailableError(
                        f"no otrace node answers at {self.endpoint}: is `otrace serve` running "
                        f"and is this its query address (--endpoint)? ({detail})"
                    ) from None
            raise error_from_rpc(exc, f"query API at {self.endpoint}") from None
        except StopIteration:
            raise errors.UnavailableError(
                f"the node at {self.endpoint} closed the query session"
            ) from None

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._channel is None:
            raise errors.UnavailableError("the query session is not open; call open() first")
        sealed = self._channel.seal(encode(message))
        reply = decode(self._channel.open(bytes(self._exchange({"record": sealed})["record"])))
        if "error" in reply:
            name, text = reply["error"]
            cls = getattr(errors, str(name), None)
            if isinstance(cls, type) and issubclass(cls, OTraceError):
                raise cls(str(text))
            raise OTraceError(str(text))
        return reply

    # --------------------------------------------------------------- queries

    def trapdoor(self, keyword: str) -> bytes:
        return trapdoor_for(self.credential.index_key, keyword)

    def fetch_trace(self, trace_id: bytes, *, lookback_ns: int | None = None) -> TraceAnswer:
        if len(trace_id) != 16 or not any(trace_id):
            raise InvalidRequest("a trace id is 16 bytes (32 hex digits) and not all zero")
        reply = self._request(
            {
                "op": "get_trace",
                "trapdoor": self.trapdoor(trace_keyword(trace_id)),
                "lookback_ns": lookback_ns,
            }
        )
        return _answer(reply)

    def get_trace(self, trace_id: bytes) -> TracesData:
        """Every stored span of `trace_id` (empty if none)."""
        return self.fetch_trace(trace_id).data

    def search(
        self,
        *,
        service: str | None = None,
        name: str | None = None,
        attributes: Sequence[tuple[str, str]] = (),
        min_duration_ns: int | None = None,
        max_duration_ns: int | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 20,
    ) -> TraceAnswer:
        """Traces with a span matching every given predicate, most recent first."""
        end = time.time_ns() if end_ns is None else end_ns
        start = end - 3600 * 10**9 if start_ns is None else start_ns
        if start > end:
            raise InvalidRequest("the start of the time range is after its end")
        words = [service_keyword(service)] if service else []
        words += [name_keyword(name)] if name else []
        words += [attr_keyword(k, v) for k, v in attributes]
        low, high = min_duration_ns or 0, _FOREVER if max_duration_ns is None else max_duration_ns
        if low > high:
            raise InvalidRequest("the minimum duration is above the maximum")
        durations = duration_cover(low, high) if (min_duration_ns or max_duration_ns) else []
        times = time_cover(start, end)
        reply = self._request(
            {
                "op": "search",
                "terms": [self.trapdoor(w) for w in words],
                # A very wide range is left to exact filtering rather than a huge cover.
                "time_cover": [self.trapdoor(w) for w in times] if len(times) <= _MAX_COVER else [],
                "duration_cover": [self.trapdoor(w) for w in durations],
                "start_ns": start,
                "end_ns": end,
                "min_duration_ns": low,
                "max_duration_ns": high,
                "limit": limit,
            }
        )
        return _answer(reply)

    def services(self) -> list[str]:
        return [str(s) for s in self._request({"op": "services"})["services"]]

    def operations(self, service: str) -> list[str]:
        reply = self._request(
            {"op": "operations", "trapdoor": self.trapdoor(service_keyword(service))}
        )
        return [str(o) for o in reply["operations"]]


def _answer(reply: dict[str, Any]) -> TraceAnswer:
    return TraceAnswer(
        TracesData.FromString(bytes(reply["traces"])), bool(reply["truncated"]), int(reply["reads"])
    )
