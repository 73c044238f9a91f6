"""How roles reach each other: in memory for tests, raw bytes over gRPC between processes.

gRPC service `otrace.faas.v1.Faas`, generic handlers on raw bytes (no protoc):
`Call` carries one message to a role and brings back its answer. An
`OTraceError` crosses as status details `"<ClassName>: <message>"` and is raised
again as the same class on the caller's side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any, Protocol

import grpc

from otrace.errors import OTraceError, UnavailableError
from tee import GrpcServer, error_from_rpc

__all__ = ["GrpcServer", "GrpcTransport", "LocalTransport", "Transport", "serve_bytes"]

SERVICE = "otrace.faas.v1.Faas"
Handler = Callable[[bytes], bytes]
_MAX_MESSAGE = 64 << 20


class Transport(Protocol):
    """Carries one message to a role and returns its answer."""

    def call(self, data: bytes, method: str = "Call") -> bytes: ...

    def close(self) -> None: ...


class LocalTransport:
    """A role in this process: the same bytes, no network."""

    def __init__(self, handler: Handler, **methods: Handler) -> None:
        self._methods = {"Call": handler, **methods}

    def call(self, data: bytes, method: str = "Call") -> bytes:
        return self._methods[method](data)

    def close(self) -> None:
        return None


class GrpcTransport:
    """A role in another process at `target` (`host:port`)."""

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        self._target = target
        self._timeout = timeout
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE)]
        self._channel = grpc.insecure_channel(target, options=options)

    def call(self, data: bytes, method: str = "Call") -> bytes:
        stub = self._channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            response = stub(data, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self._target) from None
        return bytes(response)

    def close(self) -> None:
        self._channel.close()


def serve_bytes(methods: Mapping[str, Handler], listen: str, *, workers: int = 8) -> GrpcServer:
    """Serve `methods` (name -> bytes handler) on `listen`; port 0 picks a free port."""
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(_grpc_method(handler))
        for name, handler in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise UnavailableError(f"cannot listen on {listen}: {exc}") from None
    server.start()
    return GrpcServer(server, port)


def _grpc_method(handler: Handler) -> Callable[[bytes, Any], bytes]:
    def method(request: bytes, context: Any) -> bytes:
        try:
            return handler(request)
        except OTraceError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{type(exc).__name__}: {exc}")
            raise

    return method
