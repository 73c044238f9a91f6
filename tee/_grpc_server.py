"""A running gRPC server, as the KMS and the FaaS roles hand it back to their callers."""

from __future__ import annotations

import grpc

__all__ = ["GrpcServer"]


class GrpcServer:
    """A started gRPC server; `port` is the bound port (useful with port 0)."""

    def __init__(self, server: grpc.Server, port: int) -> None:
        self._server = server
        self.port = port

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()
