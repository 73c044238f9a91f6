"""Host side of ingest: concurrent Exports ride one `ingest` ecall (group commit).

The host never parses span content: it queues (content type, raw body) pairs
and hands everything queued to the enclave in one ecall, which validates and
journals them in one transaction. While that ecall runs, new requests queue up
for the next one. When too many requests wait, or the enclave reports a deep
journal, new requests are refused as `Overloaded` with a retry delay: the
receivers answer UNAVAILABLE (gRPC) or 503 (HTTP) with RetryInfo.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import cbor2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otrace.errors import OTraceError

__all__ = ["Answer", "BearerToken", "GroupCommitter", "Overloaded"]

log = logging.getLogger("otrace.collector")
EcallFn = Callable[[str, bytes], bytes]


class Overloaded(OTraceError):
    """The node sheds load; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Answer:
    """The enclave's verdict on one Export."""

    ok: bool
    accepted: int
    rejected: int
    message: str

    def response(self) -> ExportTraceServiceResponse:
        """The OTLP answer to an accepted Export: `partial_success` when spans were dropped."""
        result = ExportTraceServiceResponse()
        if self.rejected:
            result.partial_success.rejected_spans = self.rejected
            result.partial_success.error_message = self.message
        return result


class BearerToken:
    """The optional `authorization: Bearer <token>` both receivers require."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    def __repr__(self) -> str:
        return f"BearerToken(required={self._expected is not None})"

    def accepts(self, header: str) -> bool:
        """True when no token is configured, or `header` carries exactly it."""
        if self._expected is None:
            return True
        return hmac.compare_digest(header.encode(), self._expected)


@dataclass(slots=True)
class _Pending:
    content_type: str
    body: bytes
    future: Future[Answer]


class GroupCommitter:
    """Batches Exports into `ingest` ecalls on one worker thread."""

    def __init__(
        self,
        ecall: EcallFn,
        *,
        max_pending: int = 256,
        max_journal_depth: int = 4096,
        max_batch: int = 64,
        retry_after: float = 1.0,
        depth_poll_s: float = 0.1,
    ) -> None:
        self._ecall = ecall
        self._max_pending = max_pending
        self._max_depth = max_journal_depth
        self._max_batch = max_batch
        self._retry_after = retry_after
        self._depth_poll_s = depth_poll_s
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.journal_depth = 0
        self.accepted_spans = 0
        self.rejected_spans = 0
        self.refused_requests = 0
        self._worker = threading.Thread(target=self._run, name="otrace-group-commit", daemon=True)
        self._worker.start()

    def submit(self, content_type: str, body: bytes) -> Future[Answer]:
        """Queues one Export; the future resolves once it is journaled (or refused)."""
        with self._cond:
            if self._closed:
                raise Overloaded("the node is shutting down", self._retry_after)
            if len(self._queue) >= self._max_pending or self.journal_depth >= self._max_depth:
                self.refused_requests += 1
                raise Overloaded(
                    f"ingest is saturated ({len(self._queue)} requests queued, journal depth "
                    f"{self.journal_depth}); retry later",
                    self._retry_after,
                )
            item = _Pending(content_type, body, Future())
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed and not self._saturated():
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                batch = [
                    self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
                ]
            if batch:
                self._commit(batch)
            else:
                self._refresh_depth()

    def _saturated(self) -> bool:
        return self.journal_depth >= self._max_depth

    def _refresh_depth(self) -> None:
        """Only ingest replies carry the journal depth, and while shedding on it nothing is
        ingested: ask with an empty ingest, so shedding stops once epochs have drained it."""
        with self._cond:
            self._cond.wait(self._depth_poll_s)
        try:
            self.journal_depth = int(cbor2.loads(self._ecall("ingest", cbor2.dumps([])))["depth"])
        except OTraceError as exc:
            log.error("journal depth poll failed: %s", exc)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            raw = self._ecall("ingest", cbor2.dumps([[p.content_type, p.body] for p in batch]))
            reply = cbor2.loads(raw)
        except OTraceError as exc:
            log.error("ingest ecall failed: %s", exc)
            for p in batch:
                p.future.set_exception(Overloaded(f"ingest failed: {exc}", self._retry_after))
            return
        self.journal_depth = int(reply["depth"])
        for p, (ok, accepted, rejected, message) in zip(batch, reply["outcomes"], strict=True):
            self.accepted_spans += accepted
            self.rejected_spans += rejected
            p.future.set_result(Answer(bool(ok), int(accepted), int(rejected), str(message)))
