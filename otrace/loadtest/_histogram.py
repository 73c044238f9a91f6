"""Export latencies in bounded memory: log-scale buckets, 2% wide, mergeable across processes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

__all__ = ["LatencyHistogram"]

_GROWTH = 1.02
_FLOOR_S = 1e-6  # latencies below 1 µs land in bucket 0


class LatencyHistogram:
    """Counts latencies per bucket; percentiles are accurate to one bucket (2%)."""

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self._counts: Counter[int] = Counter(counts or {})
        self.total = sum(self._counts.values())

    def record(self, seconds: float) -> None:
        self._counts[_bucket(seconds)] += 1
        self.total += 1

    def merge(self, counts: Mapping[int, int]) -> None:
        """Adds another histogram's `counts()`."""
        self._counts.update(counts)
        self.total += sum(counts.values())

    def counts(self) -> dict[int, int]:
        """Bucket -> count: small and picklable, for sending between processes."""
        return dict(self._counts)

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0 < q <= 100) in milliseconds; 0.0 when empty."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(self.total * q / 100))
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                return _upper(bucket) * 1000
        raise AssertionError("unreachable: rank <= total")


def _bucket(seconds: float) -> int:
    if seconds <= _FLOOR_S:
        return 0
    return 1 + int(math.log(seconds / _FLOOR_S, _GROWTH))


def _upper(bucket: int) -> float:
    return float(_FLOOR_S * _GROWTH**bucket)
