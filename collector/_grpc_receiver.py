"""OTLP/gRPC receiver: `TraceService/Export` on raw bytes, plus gRPC health.

The handler never deserialises the request (the enclave does); it answers
with the OTLP-specified codes: INVALID_ARGUMENT for a malformed request,
RESOURCE_EXHAUSTED for one over the size limit (enforced by gRPC after
decompression), UNAUTHENTICATED for a missing or wrong bearer token, and
UNAVAILABLE with a RetryInfo both in the status details and as the
`google.rpc.retryinfo-bin` trailer (which the Python OTLP exporter reads) when
the node sheds load.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector._group_commit import BearerToken, GroupCommitter, Overloaded
from collector._otlp import PROTOBUF
from otrace.errors import ConfigError

__all__ = ["GrpcReceiver", "TlsFiles"]

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT = f"/{SERVICE}/Export"
_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM contents for TLS; `client_ca` turns on mTLS."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[Any, ...]) -> None:
        self.code, self.details, self.trailing_metadata = code, details, trailers


def retry_status(message: str, retry_after: float) -> _Status:
    """UNAVAILABLE carrying RetryInfo in both places clients look for it."""
    info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=max(1, round(retry_after))))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    status.details.add().Pack(info)
    trailers = (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )
    return _Status(grpc.StatusCode.UNAVAILABLE, message, trailers)


class _TraceService(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, committer: GroupCommitter, token: str) -> None:
        self._committer = committer
        self._token = BearerToken(token)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == EXPORT:
            return grpc.unary_unary_rpc_method_handler(self._export)
        return None

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        given = dict(context.invocation_metadata()).get("authorization", "")
        if not self._token.accepts(str(given)):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            answer = self._committer.submit(PROTOBUF, request).result(timeout=_WAIT)
        except Overloaded as exc:
            context.abort_with_status(retry_status(str(exc), exc.retry_after))
            raise  # abort_with_status raises; this line is never reached
        except TimeoutError:
            # It may still be journaled: a retry can then store these spans twice.
            context.abort_with_status(retry_status("ingest did not answer in time", 1.0))
            raise
        if not answer.ok:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, answer.message)
        return bytes(answer.response().SerializeToString())


class GrpcReceiver:
    """A gRPC server with the OTLP trace service and the standard health service."""

    def __init__(
        self,
        committer: GroupCommitter,
        address: str,
        *,
        max_request_bytes: int,
        token: str = "",
        tls: TlsFiles | None = None,
        workers: int = 16,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=options)
        self._server.add_generic_rpc_handlers((_TraceService(committer, token),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = self._bind(address, tls)
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"

    def _bind(self, address: str, tls: TlsFiles | None) -> int:
        try:
            if tls is None:
                port = self._server.add_insecure_port(address)
            else:
                creds = grpc.ssl_server_credentials(
                    [(tls.key, tls.cert)],
                    root_certificates=tls.client_ca,
                    require_client_auth=tls.client_ca is not None,
                )
                port = self._server.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for OTLP/gRPC on {address}: {exc}") from None
        if not port:
            raise ConfigError(f"cannot listen for OTLP/gRPC on {address} (address in use?)")
        return int(port)

    def start(self) -> None:
        self._server.start()
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
