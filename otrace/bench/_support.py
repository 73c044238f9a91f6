"""Measurement plumbing kept out of the timed loops' way: progress, temp stores, RSS."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

from oram_store import SqlBucketStore

__all__ = ["ProgressCallback", "RssMeter", "TempStore", "Ticker", "peak_rss_mib", "settle"]

ProgressCallback = Callable[[str, int, int], None]
_MIB = 1024 * 1024


def settle(store: SqlBucketStore | None = None) -> None:
    """Flushes earlier writes so the next timed loop does not pay for them.

    Building a tree leaves gigabytes of dirty pages and a long WAL behind; a
    loop timed right after would compete with their write-back. Every variant
    starts instead from an empty WAL (SQLite) and a clean page cache.
    """
    if store is not None and store.dialect == "sqlite":
        raw = store.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        finally:
            raw.close()
    if hasattr(os, "sync"):
        os.sync()


class Ticker:
    """Reports progress about 200 times per phase, to keep its cost out of the timings."""

    def __init__(self, progress: ProgressCallback | None, phase: str, total: int) -> None:
        self._progress = progress
        self._phase = phase
        self._total = total
        self._every = max(1, total // 200)
        if progress is not None:
            progress(phase, 0, total)

    def __call__(self, done: int) -> None:
        if self._progress is not None and (done % self._every == 0 or done == self._total):
            self._progress(self._phase, done, self._total)


class TempStore:
    """A SQLite `SqlBucketStore` in its own file, closed and deleted on exit."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.path = workdir / f"{name}.sqlite"
        self.store = SqlBucketStore(f"sqlite:///{self.path}")

    def __enter__(self) -> TempStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def size_mib(self) -> float:
        files = [Path(f"{self.path}{s}") for s in ("", "-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / _MIB


class RssMeter:
    """Peak resident set size of this process, overall and per interval between marks.

    Intervals rely on Linux's resettable high-water mark; elsewhere each
    interval's peak is the peak since process start (an upper bound).
    """

    def __init__(self) -> None:
        self._overall = peak_rss_mib()
        _reset_peak_rss()

    def mark(self) -> float:
        """Ends the current interval: returns its peak (MiB) and starts the next one."""
        peak = peak_rss_mib()
        self._overall = max(self._overall, peak)
        _reset_peak_rss()
        return peak

    @property
    def overall(self) -> float:
        """Peak since this meter was made (MiB), whatever was reset in between."""
        return max(self._overall, peak_rss_mib())


def peak_rss_mib() -> float:
    """This process's peak resident set size since start or the last interval reset."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or no permission: peaks stay cumulative
