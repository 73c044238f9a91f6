"""Query sessions inside the enclave: attested channel, analyst login, then requests.

The host relays a session's frames (`open`, `call`, `close`) without being
able to read them. A session is refused (and forgotten) on any channel error
or a failed login; a bad *request* inside an authenticated session gets an
error reply and the session goes on. At most `max_sessions` sessions exist at
once; idle ones are dropped after `idle_s`.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from otrace.errors import AuthenticationError, InvalidRequest, OTraceError, UnavailableError
from query._credential import analyst_key
from query._executor import QueryExecutor, QueryResult, SearchRequest
from query._protocol import CHANNEL_CONTEXT, decode, encode, login_proof
from tee import AttestedChannel, EnclaveHello, EnclaveIdentity, Platform, open_channel

__all__ = ["QuerySessions"]

_NONCE_SIZE = 32


@dataclass(slots=True)
class _Session:
    hello: EnclaveHello
    nonce: bytes = field(repr=False)
    used: float
    channel: AttestedChannel | None = None
    analyst: str = ""


class QuerySessions:
    """The enclave's session table; thread-safe, each session used by one stream at a time."""

    def __init__(
        self,
        platform: Platform,
        identity: EnclaveIdentity,
        executor: QueryExecutor,
        analyst_root: bytes,
        *,
        max_sessions: int = 64,
        idle_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._platform = platform
        self._identity = identity
        self._executor = executor
        self._root = analyst_root
        self._max = max_sessions
        self._idle = idle_s
        self._clock = clock
        self._sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"QuerySessions(open={len(self._sessions)})"

    def credential_key(self, name: str) -> bytes:
        return analyst_key(self._root, name)

    def open(self, nonce: bytes) -> tuple[int, bytes, bytes]:
        """A new session for the client's nonce: (session id, quote, enclave public key)."""
        if len(nonce) != _NONCE_SIZE:
            raise InvalidRequest(f"a session nonce must be {_NONCE_SIZE} bytes")
        hello = open_channel(self._platform, self._identity, nonce)
        with self._lock:
            now = self._clock()
            for sid in [k for k, s in self._sessions.items() if now - s.used > self._idle]:
                del self._sessions[sid]
            if len(self._sessions) >= self._max:
                raise UnavailableError(
                    f"the node has {self._max} open query sessions; retry shortly"
                )
            sid = secrets.randbits(63)
            self._sessions[sid] = _Session(hello, nonce, now)
        return sid, hello.quote, hello.public_key

    def close(self, sid: int) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def call(self, sid: int, record: bytes, client_public: bytes | None = None) -> bytes:
        """Handles one record of session `sid`; returns the sealed reply."""
        with self._lock:
            session = self._sessions.get(sid)
        if session is None:
            raise AuthenticationError("unknown or expired query session; open a new one")
        session.used = self._clock()
        try:
            if session.channel is None:
                if client_public is None:
                    raise AuthenticationError("the first session record must carry the client key")
                session.channel = session.hello.finish(
                    client_public, session.nonce, CHANNEL_CONTEXT
                )
                message = decode(session.channel.open(record), "login")
                return session.channel.seal(self._login(session, client_public, message))
            message = decode(session.channel.open(record), "request")
        except OTraceError:
            self.close(sid)
            raise
        return session.channel.seal(encode(self._answer(message)))

    def _login(self, session: _Session, client_public: bytes, message: dict[str, Any]) -> bytes:
        name, proof = message.get("analyst"), message.get("proof")
        if not isinstance(name, str) or not isinstance(proof, bytes):
            raise AuthenticationError("the session did not start with an analyst login")
        expected = login_proof(
            self.credential_key(name),
            session.hello.quote,
            session.hello.public_key,
            client_public,
            session.nonce,
        )
        if not hmac.compare_digest(expected, proof):
            raise AuthenticationError(
                "the node refused the analyst credential (unknown analyst or wrong key; "
                "was it written by this node?)"
            )
        session.analyst = name
        return encode({"ok": True})

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._dispatch(message)
        except (InvalidRequest, KeyError, TypeError, ValueError) as exc:
            text = str(exc) if isinstance(exc, InvalidRequest) else "malformed query request"
            return {"error": ["InvalidRequest", text]}
        except OTraceError as exc:
            return {"error": [type(exc).__name__, str(exc)]}

    def _dispatch(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        ex = self._executor
        if op == "get_trace":
            lookback = message.get("lookback_ns")
            return _result(
                ex.get_trace(
                    bytes(message["trapdoor"]), None if lookback is None else int(lookback)
                )
            )
        if op == "search":
            request = SearchRequest(
                terms=tuple(bytes(t) for t in message.get("terms", ())),
                time_cover=tuple(bytes(t) for t in message.get("time_cover", ())),
                duration_cover=tuple(bytes(t) for t in message.get("duration_cover", ())),
                start_ns=int(message["start_ns"]),
                end_ns=int(message["end_ns"]),
                min_duration_ns=int(message.get("min_duration_ns", 0)),
                max_duration_ns=int(message.get("max_duration_ns", 2**63 - 1)),
                limit=int(message.get("limit", 20)),
            )
            return _result(ex.search(request))
        if op == "services":
            return {"services": ex.services()}
        if op == "operations":
            return {"operations": ex.operations(bytes(message["trapdoor"]))}
        raise InvalidRequest(f"unknown query operation {op!r}")


def _result(result: QueryResult) -> dict[str, Any]:
    return {"traces": result.traces(), "truncated": result.truncated, "reads": result.reads}
