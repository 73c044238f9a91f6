"""OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, optionally gzipped.

Answers as the OTLP specification says: 200 with an ExportTraceServiceResponse
(in the request's encoding, with `partial_success` when spans were dropped),
400 with a google.rpc.Status for a malformed body, 413 when the body (after
decompression) is over the limit, 415 for another content type, 401 for a
missing or wrong bearer token, and 503 with `Retry-After` when shedding load.
With an `ssl_context` it serves HTTPS (and requires client certificates when
the context does).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2

from collector._group_commit import BearerToken, GroupCommitter, Overloaded
from collector._otlp import JSON, PROTOBUF
from otrace.errors import ConfigError

__all__ = ["HttpReceiver"]

_WAIT = 60.0


class HttpReceiver:
    """aiohttp server on its own thread and event loop."""

    def __init__(
        self,
        committer: GroupCommitter,
        address: str,
        *,
        max_request_bytes: int,
        token: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._committer = committer
        self._ssl_context = ssl_context
        self._limit = max_request_bytes
        self._token = BearerToken(token)
        host, _, port = address.rpartition(":")
        self._host, self._port = host or "127.0.0.1", int(port)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="otrace-http", daemon=True
        )
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            self.port = future.result(timeout=10)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for OTLP/HTTP on {self._host}:{self._port}: {exc}"
            ) from None

    async def _start(self) -> int:
        app = web.Application(client_max_size=self._limit)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context)
        await site.start()
        return int(self._runner.addresses[0][1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            self._loop.close()
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _traces(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        encode_json = content_type == JSON
        if not self._token.accepts(request.headers.get("Authorization", "")):
            return _status(401, "missing or wrong bearer token", encode_json)
        if content_type not in (PROTOBUF, JSON):
            return _status(415, f"use Content-Type {PROTOBUF} or {JSON}", False)
        try:
            # aiohttp inflates gzip/deflate bodies as it reads them and counts the
            # inflated bytes against client_max_size, so the limit holds after
            # decompression and a gzip bomb stops at the limit.
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _status(413, f"request larger than {self._limit} bytes", encode_json)
        except web.HTTPBadRequest as exc:
            return _status(400, f"unreadable body: {exc.text}", encode_json)
        except web.RequestPayloadError:
            # A body that does not inflate (garbage declared as gzip): the client's fault.
            return _status(
                400, "unreadable body: it does not decode as its Content-Encoding", encode_json
            )
        return await self._export(content_type, body, encode_json)

    async def _export(self, content_type: str, body: bytes, encode_json: bool) -> web.Response:
        try:
            future = self._committer.submit(content_type, body)
            answer = await asyncio.wait_for(asyncio.wrap_future(future), _WAIT)
        except (Overloaded, TimeoutError) as exc:
            retry_after = exc.retry_after if isinstance(exc, Overloaded) else 1.0
            response = _status(503, str(exc) or "ingest did not answer in time", encode_json)
            response.headers["Retry-After"] = str(max(1, round(retry_after)))
            return response
        if not answer.ok:
            return _status(400, answer.message, encode_json)
        return _message(200, answer.response(), encode_json)


def _status(code: int, message: str, encode_json: bool) -> web.Response:
    return _message(
        code, status_pb2.Status(code=_GRPC_CODE.get(code, 2), message=message), encode_json
    )


def _message(code: int, message: Any, encode_json: bool) -> web.Response:
    if encode_json:
        return web.Response(status=code, text=json_format.MessageToJson(message), content_type=JSON)
    return web.Response(status=code, body=message.SerializeToString(), content_type=PROTOBUF)


# google.rpc.Code for each HTTP status we send.
_GRPC_CODE = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}
