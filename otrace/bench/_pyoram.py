"""PyORAM's `PathORAM` on file storage, driven with the workload otrace gets.

PyORAM (the `bench` extra) is imported only here and only when measured. Its
code predates current Python, so deprecation warnings it raises are silenced
around the import and its calls, nowhere else.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otrace.bench._support import settle
from otrace.bench.oram import (
    MixedOp,
    OramBenchConfig,
    ProgressCallback,
    PyOramRun,
    VariantResult,
)
from otrace.errors import ConfigError

__all__ = ["measure_pyoram"]

_PHASE = "PyORAM"


@contextmanager
def _quiet_legacy_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        yield


def _path_oram_class() -> Any:
    try:
        with _quiet_legacy_warnings():
            from pyoram.oblivious_storage.tree.path_oram import PathORAM
    except ImportError as exc:
        raise ConfigError(
            "PyORAM is not installed: install the bench extra (pip install -e '.[bench]') "
            "or pass --skip-pyoram"
        ) from exc
    return PathORAM


def measure_pyoram(
    config: OramBenchConfig,
    workdir: Path,
    workload: Sequence[MixedOp],
    payload: bytes,
    progress: ProgressCallback | None = None,
) -> PyOramRun:
    """Sets up PyORAM (its own key, default AES-CTR) and times `workload` on it twice.

    First as PyORAM runs (writes reach the page cache, never the disk), then
    with its file flushed and fsync'ed after every access, as otrace commits.
    PyORAM's setup inserts every block through the ORAM, so it takes about N
    accesses' time; it is reported but not compared with otrace's init.
    """
    path_oram = _path_oram_class()
    path = workdir / "pyoram.bin"
    if progress is not None:
        progress(f"{_PHASE}: setup", 0, 1)
    start = time.perf_counter()
    with _quiet_legacy_warnings():
        oram = path_oram.setup(
            str(path),
            config.block_size,
            config.blocks,
            storage_type="file",
            cached_levels=config.cache_levels,
            ignore_existing=True,
        )
    setup_s = time.perf_counter() - start
    try:
        if progress is not None:
            progress(f"{_PHASE}: setup", 1, 1)
        height = int(oram.heap_storage.virtual_heap.height)
        settle()
        plain = _timed_accesses(oram, workload, payload, _PHASE, None, progress)
        settle()
        durable = _timed_accesses(
            oram, workload, payload, f"{_PHASE} + fsync", _fsync_of(oram), progress
        )
    finally:
        with _quiet_legacy_warnings():
            oram.close()
        path.unlink(missing_ok=True)
    return PyOramRun(plain, setup_s, height, durable)


def _fsync_of(oram: Any) -> Callable[[], None]:
    """Waits for PyORAM's pending background write, then fsyncs its file.

    PyORAM has no public flush: this reaches into its file storage
    (pyoram 0.2.1 `BlockStorageFile._check_async` and `_f`).
    """
    storage = oram.raw_storage

    def flush() -> None:
        storage._check_async()
        os.fsync(storage._f.fileno())

    return flush


def _timed_accesses(
    oram: Any,
    workload: Sequence[MixedOp],
    payload: bytes,
    name: str,
    after_each: Callable[[], None] | None,
    progress: ProgressCallback | None,
) -> VariantResult:
    total = len(workload)
    every = max(1, total // 200)
    phase = f"{name}: accesses"
    with _quiet_legacy_warnings():
        start = time.perf_counter()
        for i, (block, is_write) in enumerate(workload, start=1):
            if is_write:
                oram.write_block(block, payload)
            else:
                oram.read_block(block)
            if after_each is not None:
                after_each()
            if progress is not None and (i % every == 0 or i == total):
                progress(phase, i, total)
        return VariantResult(name, total, time.perf_counter() - start)
