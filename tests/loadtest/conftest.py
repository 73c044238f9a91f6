"""A counting OTLP sink on port 0 (gRPC and HTTP), and short load configurations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from otrace.loadtest import Endpoint, LoadConfig, OtlpSink, RetryPolicy


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink("127.0.0.1:0", "127.0.0.1:0") as started:
        yield started


def short_load(target: str, **changes: Any) -> LoadConfig:
    """About 2,000 spans in one second from one worker; tests override what they test."""
    endpoint = Endpoint(target, gzip=changes.pop("gzip", False), timeout_s=5.0)
    fields: dict[str, Any] = {
        "rate": 2_000.0,
        "duration_s": 1.0,
        "workers": 1,
        "threads": 2,
        "spans_per_request": 100,
        "retry": RetryPolicy(max_attempts=6, initial_backoff_s=0.05, budget_s=5.0),
    }
    fields.update(changes)
    return LoadConfig(endpoint, **fields)
