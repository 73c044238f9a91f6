"""Which acknowledged spans the harness remembers in full, in bounded memory.

Counting every acknowledged span is cheap (integers). Remembering each one
(trace id, span id, digest of its bytes) is what verification needs, and for
a long run at 100k spans/s it would not fit. So the ledger keeps full detail
for a sample of traces chosen by trace-id hash: the `limit` acknowledged traces
with the smallest `sample_key` (a bottom-k sample). The choice does not depend
on timing or on which worker sent a trace, and per-worker samples merge into
the global one exactly (bottom-k of the union). `limit=None` keeps every trace.

A span digest is SHA-256 (first 16 bytes) of the serialized span, so read-back
verification can tell a lost span from one that came back altered.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from otrace.loadtest._templates import sample_key

__all__ = ["NO_LIMIT", "AckLedger", "ExpectedTrace", "merge_samples", "span_digest"]

NO_LIMIT = 1 << 64  # above every 64-bit key


def span_digest(serialized_span: bytes) -> bytes:
    """What the ledger remembers of a span's bytes."""
    return hashlib.sha256(serialized_span).digest()[:16]


@dataclass(frozen=True, slots=True)
class ExpectedTrace:
    """An acknowledged trace as sent: span id -> digest of its bytes."""

    trace_id: bytes
    key: int
    spans: tuple[tuple[bytes, bytes], ...]

    def __repr__(self) -> str:
        return f"ExpectedTrace({self.trace_id.hex()}, {len(self.spans)} spans)"


class AckLedger:
    """Bottom-`limit` acknowledged traces by `sample_key` (all of them when `limit` is None)."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._heap: list[tuple[int, bytes]] = []  # (-key, trace id): the largest key on top
        self._spans: dict[bytes, dict[bytes, bytes]] = {}
        # SDK mode records from one exporter thread per service, all into one ledger.
        self._lock = threading.Lock()

    def threshold(self) -> int:
        """Traces with a key at or above this cannot enter the sample; skip digesting them."""
        if self._limit == 0:
            return 0
        if self._limit is None or len(self._heap) < self._limit:
            return NO_LIMIT
        return -self._heap[0][0]

    def record(self, trace_id: bytes, spans: Iterable[tuple[bytes, bytes]]) -> None:
        """Remembers acknowledged spans (span id, serialized bytes) of `trace_id`.

        A trace may arrive in several calls (the SDK batches spans, not traces).
        """
        with self._lock:
            self._record(trace_id, spans)

    def _record(self, trace_id: bytes, spans: Iterable[tuple[bytes, bytes]]) -> None:
        known = self._spans.get(trace_id)
        if known is None:
            key = sample_key(trace_id)
            if key >= self.threshold():
                return
            known = self._spans[trace_id] = {}
            heapq.heappush(self._heap, (-key, trace_id))
            if self._limit is not None and len(self._heap) > self._limit:
                _, evicted = heapq.heappop(self._heap)
                del self._spans[evicted]
                if evicted == trace_id:
                    return
        for span_id, raw in spans:
            known[span_id] = span_digest(raw)

    def sample(self) -> list[ExpectedTrace]:
        """The kept traces, smallest key first."""
        return sorted(
            (
                ExpectedTrace(tid, -neg, tuple(sorted(self._spans[tid].items())))
                for neg, tid in self._heap
            ),
            key=lambda t: t.key,
        )


def merge_samples(samples: Iterable[list[ExpectedTrace]], limit: int | None) -> list[ExpectedTrace]:
    """The global sample from per-worker ones: bottom-`limit` of their union."""
    merged: dict[bytes, ExpectedTrace] = {}
    for sample in samples:
        for trace in sample:
            seen = merged.get(trace.trace_id)
            if seen is not None:  # the same trace acknowledged by two workers (SDK mode)
                trace = ExpectedTrace(
                    trace.trace_id, trace.key, tuple(sorted({*seen.spans, *trace.spans}))
                )
            merged[trace.trace_id] = trace
    ordered = sorted(merged.values(), key=lambda t: t.key)
    return ordered if limit is None else ordered[:limit]
