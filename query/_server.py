"""The query API on the host: a gRPC relay between analysts and the enclave's sessions.

The host sees only the handshake (nonce, quote, public keys) and sealed
records; it forwards each frame of a `Session` stream to one ecall
(`query_open`, `query_call`, `query_close`) and cannot read or forge queries
or answers. Errors cross as status details `"<ClassName>: <message>"`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from otrace import errors
from otrace.errors import OTraceError, UnavailableError
from query._protocol import SESSION_METHOD, decode, encode

__all__ = ["MAX_MESSAGE", "QueryServer"]

MAX_MESSAGE = 64 << 20
_STATUS = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    errors.AttestationError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.IntegrityError: grpc.StatusCode.DATA_LOSS,
}
EnclaveCall = Callable[[str, bytes], bytes]


class _Relay(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, call: EnclaveCall) -> None:
        self._call = call

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == SESSION_METHOD:
            return grpc.stream_stream_rpc_method_handler(self._session)
        return None

    def _session(self, frames: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
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

    def __init__(self, call: EnclaveCall, listen: str, *, workers: int = 16) -> None:
        self._server: Any = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otrace-query"),
            handlers=[_Relay(call)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
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
