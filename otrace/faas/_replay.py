"""Replay protection: the (request_id, step) pairs a function already ran, until they expire.

Entries live until the request's `expires_at_ms`; after that the message is
refused as expired anyway, so forgetting it is safe. The set is in memory.
Across a restart a `FunctionHost` fails closed instead of persisting it: it
refuses every request issued before it started (see `FunctionHost`), so a
message captured before the restart cannot be replayed into the new process.
"""

from __future__ import annotations

import heapq
import threading

from otrace.errors import CapacityError, ChainViolation

__all__ = ["ReplayGuard"]


class ReplayGuard:
    """Thread-safe seen set of (request_id, step) with expiry; bounded by `max_entries`."""

    __slots__ = ("_expiries", "_lock", "_max", "_seen")

    def __init__(self, *, max_entries: int = 1 << 20) -> None:
        self._lock = threading.Lock()
        self._seen: set[tuple[bytes, int]] = set()
        self._expiries: list[tuple[int, bytes, int]] = []
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, request_id: bytes, step: int) -> None:
        """Raise `ChainViolation` if this (request, step) already ran."""
        if (request_id, step) in self._seen:
            raise ChainViolation(
                f"replay: step {step} of request {request_id.hex()} was already executed"
            )

    def record(self, request_id: bytes, step: int, expires_at_ms: int, now_ms: int) -> None:
        """Mark (request, step) as run; raise if another thread or an earlier message did."""
        with self._lock:
            self._forget_expired(now_ms)
            self.check(request_id, step)
            if len(self._seen) >= self._max:
                raise CapacityError("replay set is full: too many unexpired requests")
            self._seen.add((request_id, step))
            heapq.heappush(self._expiries, (expires_at_ms, request_id, step))

    def _forget_expired(self, now_ms: int) -> None:
        while self._expiries and self._expiries[0][0] < now_ms:
            _, request_id, step = heapq.heappop(self._expiries)
            self._seen.discard((request_id, step))
