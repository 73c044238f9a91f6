"""The query API on the host: a gRPC relay between analysts and the enclave's sessions.

The host sees only the handshake (nonce, quote, public keys) and sealed
records; it forwards each frame of a `Session` stream to one ecall
(`query_open`, `query_call`, `query_close`) and cannot read or forge queries
or answers. Errors cross as status details `"<ClassName>: <message>"`.

On a collector replica that does not lead the term, `route()` names the
leader's query API and the session is relayed there byte for byte instead:
the client attests and keys the channel with the leader's enclave, so the
relaying host learns no more than a relaying network does. A relayed stream
carries `otrace-relayed` metadata and is never relayed again (no loops when
two replicas briefly disagree about who leads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from otrace import errors
from otrace.errors import OTraceError, UnavailableError
from query._protocol import SESSION_METHOD, decode, encode

__all__ = ["MAX_MESSAGE", "QueryServer", "Route"]

MAX_MESSAGE = 64 << 20
_STATUS = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    errors.AttestationError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.IntegrityError: grpc.StatusCode.DATA_LOSS,
}
EnclaveCall = Callable[[str, bytes], bytes]
Route = Callable[[], str | None]  # the leader's query API, or None to serve here
_RELAYED = "otrace-relayed"
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


class _Relay(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, call: EnclaveCall, route: Route | None) -> None:
        self._call = call
        self._route = route
        self._channels: dict[str, Any] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == SESSION_METHOD:
            return grpc.stream_stream_rpc_method_handler(self._session)
        return None

    def _session(self, frames: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        relayed = any(k == _RELAYED for k, _ in context.invocation_metadata() or ())
        target = None if relayed or self._route is None else self._route()
        if target is not None:
            yield from self._forward(target, frames, context)
        else:
            yield from self._serve(frames, context)

    def _forward(
        self, target: str, frames: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.insecure_channel(target, options=_OPTIONS)
        upstream = channel.stream_stream(SESSION_METHOD)(frames, metadata=((_RELAYED, "1"),))
        context.add_callback(upstream.cancel)
        try:
            yield from upstream
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
            detail = exc.details() if isinstance(exc, grpc.Call) else ""
            if code == grpc.StatusCode.UNAVAILABLE and ": " not in (detail or ""):
                detail = f"UnavailableError: the leader's query API at {target} is unreachable"
            context.abort(code, detail or "UnavailableError: relay to the leader failed")

    def _serve(self, frames: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        sid: int | None = None
        try:
            first = decode(next(frames, b""), "handshake")
            opened = decode(self._call("query_open", encode({"nonce": first.get("nonce", b"")})))
            sid = int(opened["session"])
            yield encode({"quote": opened["quote"], "public_key": opened["public_key"]})
            for raw in frames:
                frame = decode(raw, "frame")
                sealed = self._call(
                    "query_call",
                    encode(
                        {
                            "session": sid,
                            "record": frame.get("record", b""),
                            "public_key": frame.get("public_key"),
                        }
                    ),
                )
                yield encode({"record": sealed})
        except OTraceError as exc:
            code = next(
                (c for cls, c in _STATUS.items() if isinstance(exc, cls)),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            context.abort(code, f"{type(exc).__name__}: {exc}")
        finally:
            if sid is not None:
                try:
                    self._call("query_close", encode({"session": sid}))
                except OTraceError:
                    pass  # the enclave is gone or the session already dropped


class QueryServer:
    """Listens on `listen` (port 0 picks one); `port` is the bound port."""

    def __init__(
        self, call: EnclaveCall, listen: str, *, workers: int = 16, route: Route | None = None
    ) -> None:
        self._server: Any = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otrace-query"),
            handlers=[_Relay(call, route)],
            options=_OPTIONS,
        )
        try:
            self.port = int(self._server.add_insecure_port(listen))
        except RuntimeError as exc:
            raise UnavailableError(f"cannot listen for queries on {listen}: {exc}") from None
        if self.port == 0:
            raise UnavailableError(f"cannot listen for queries on {listen}")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=1.0).wait()
