"""Intake: validate Exports and journal their valid spans (the `ingest` ecall's work).

Needs no block device: a replica that does not lead the term ingests with this
alone, and the leader's epochs (`collector._ingest`) drain what it journaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collector._journal import Journal
from collector._otlp import PROTOBUF, Limits, decode_request, validate_body
from otrace.errors import InvalidRequest

__all__ = ["IngestOutcome", "journal_requests"]


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """The answer to one Export: accepted, or refused with a reason."""

    ok: bool
    accepted: int = 0
    rejected: int = 0
    message: str = ""


def journal_requests(
    journal: Journal, items: Sequence[tuple[str, bytes]], limits: Limits
) -> list[IngestOutcome]:
    """Validates each request and journals the valid spans of all of them in one commit."""
    outcomes: list[IngestOutcome] = []
    payloads: list[bytes] = []
    for content_type, body in items:
        try:
            request = decode_request(body, content_type)
        except InvalidRequest as exc:
            outcomes.append(IngestOutcome(False, message=str(exc)))
            continue
        checked = validate_body(body, content_type, request, limits)
        if checked.accepted:
            untouched = checked.rejected == 0 and content_type == PROTOBUF
            payloads.append(body if untouched else checked.request.SerializeToString())
        outcomes.append(IngestOutcome(True, checked.accepted, checked.rejected, checked.reason))
    if payloads:
        journal.append(payloads)
    return outcomes
