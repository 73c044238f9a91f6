"""What a load test does, as one frozen value built at the CLI edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from otrace.errors import ConfigError
from otrace.loadtest._retry import RetryPolicy
from otrace.loadtest._traces import TraceShape
from otrace.loadtest._transport import Endpoint

__all__ = ["LoadConfig"]

PROTOCOLS = ("grpc", "http")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """A load test: where to send, how fast, for how long, what traces, what to remember.

    `rate` is spans per second over all workers; None sends as fast as the
    endpoint answers. `sample` is how many acknowledged traces the ledger keeps
    in full for verification (None: all of them). `pool_spans` is how many
    distinct spans each worker prebuilds before cycling with fresh trace ids.
    """

    endpoint: Endpoint
    protocol: str = "grpc"
    rate: float | None = 10_000.0
    duration_s: float = 60.0
    workers: int = 2
    threads: int = 4
    shape: TraceShape = field(default_factory=TraceShape)
    spans_per_request: int = 500
    pool_spans: int = 20_000
    sample: int | None = 200
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sdk: bool = False
    seed: int = 1

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be grpc or http, not {self.protocol!r}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate must be positive (or use --max)")
        if self.duration_s <= 0:
            raise ConfigError("--duration must be positive")
        for name in ("workers", "threads", "spans_per_request", "pool_spans"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        if self.sample is not None and self.sample < 0:
            raise ConfigError("--sample must be a count >= 0 or 'all'")
        shape = self.shape
        if shape.services < 1 or shape.depth < 1 or shape.attrs < 0:
            raise ConfigError("--services and --depth must be >= 1, --attrs >= 0")
        if not 0.0 <= shape.error_rate <= 1.0:
            raise ConfigError("--error-rate must be between 0 and 1")
        if ":" not in self.endpoint.target:
            raise ConfigError(f"--endpoint must be HOST:PORT, not {self.endpoint.target!r}")

    def worker_rate(self) -> float | None:
        return None if self.rate is None else self.rate / self.workers

    def worker_pool_spans(self) -> int:
        """Spans one worker prebuilds: its whole share of a short run, capped at `pool_spans`."""
        if self.rate is None:
            return self.pool_spans
        share = int(self.rate / self.workers * self.duration_s) + self.spans_per_request
        return max(1, min(self.pool_spans, share))
