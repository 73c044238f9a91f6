"""Read-back verification: is every acknowledged span stored, and byte-intact?

For each trace in the ledger's sample, ask a `TraceSource` (the query API
client, or anything else that returns a trace as OTLP `TracesData`) for the
trace, and compare span by span: an acknowledged span id that is absent is
*lost*; one that is present with different bytes (any attribute, name, time,
status...) is *corrupt*. Spans become searchable only after their epoch
commits, so traces that are not yet whole are asked for again until `wait_s`
has passed. Spans the source returns that the sample does not list (a span
stored twice after a retried Export, or never sampled) are not errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from otrace.loadtest._ledger import ExpectedTrace, span_digest

__all__ = ["TraceCheck", "TraceSource", "VerifyReport", "check_trace", "verify_traces"]


class TraceSource(Protocol):
    """Returns a stored trace by id (empty `TracesData` when there is none)."""

    def get_trace(self, trace_id: bytes) -> TracesData: ...


@dataclass(frozen=True, slots=True)
class TraceCheck:
    """One trace compared with what was acknowledged."""

    trace_id: bytes
    expected_spans: int
    lost: tuple[bytes, ...]  # span ids
    corrupt: tuple[bytes, ...]

    @property
    def intact(self) -> bool:
        return not self.lost and not self.corrupt


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Every sampled trace's final check."""

    checks: tuple[TraceCheck, ...]

    @property
    def verified_traces(self) -> int:
        return sum(c.intact for c in self.checks)

    @property
    def lost_spans(self) -> int:
        return sum(len(c.lost) for c in self.checks)

    @property
    def corrupt_spans(self) -> int:
        return sum(len(c.corrupt) for c in self.checks)

    @property
    def ok(self) -> bool:
        return all(c.intact for c in self.checks)

    def problems(self, limit: int = 10) -> list[str]:
        """Readable lines for the first `limit` damaged traces."""
        lines = []
        for c in self.checks:
            if c.intact:
                continue
            lost = ", ".join(s.hex() for s in c.lost[:3])
            corrupt = ", ".join(s.hex() for s in c.corrupt[:3])
            lines.append(
                f"trace {c.trace_id.hex()}: {len(c.lost)} of {c.expected_spans} spans lost"
                + (f" ({lost}{'...' if len(c.lost) > 3 else ''})" if c.lost else "")
                + (f", {len(c.corrupt)} corrupt ({corrupt})" if c.corrupt else "")
            )
            if len(lines) == limit:
                break
        return lines


def check_trace(expected: ExpectedTrace, stored: TracesData) -> TraceCheck:
    """Compares one trace as acknowledged with the trace as stored."""
    found: dict[bytes, set[bytes]] = {}
    for rs in stored.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.trace_id == expected.trace_id:
                    digest = span_digest(span.SerializeToString(deterministic=True))
                    found.setdefault(span.span_id, set()).add(digest)
    lost, corrupt = [], []
    for span_id, digest in expected.spans:
        copies = found.get(span_id)
        if copies is None:
            lost.append(span_id)
        elif digest not in copies:
            corrupt.append(span_id)
    return TraceCheck(expected.trace_id, len(expected.spans), tuple(lost), tuple(corrupt))


def verify_traces(
    source: TraceSource,
    sample: Iterable[ExpectedTrace],
    *,
    wait_s: float = 10.0,
    retry_every_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Checks every trace of `sample`, asking again for damaged ones until `wait_s` passes."""
    pending = {t.trace_id: t for t in sample}
    total = len(pending)
    checks: dict[bytes, TraceCheck] = {}
    deadline = clock() + wait_s
    while True:
        for trace_id, expected in list(pending.items()):
            check = check_trace(expected, source.get_trace(trace_id))
            checks[trace_id] = check
            if check.intact:
                del pending[trace_id]
        if progress is not None:
            progress(total - len(pending), total)
        if not pending or clock() >= deadline:
            break
        sleep(retry_every_s)
    return VerifyReport(tuple(checks[t] for t in sorted(checks)))
