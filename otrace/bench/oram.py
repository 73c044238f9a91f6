"""Side-by-side Path ORAM measurements: otrace single and batched, PyORAM, a storage floor.

Every variant runs in this process, one after the other, on the same geometry
(N blocks of B bytes, C cached levels) and, where it makes sense, on the same
random sequence of mixed reads and writes, so the printed ratios compare like
with like on one machine at one moment. Each variant gets its own database
file in the work directory, deleted as soon as the variant is measured, so
only one tree occupies the disk at a time.

The functions only measure: they take an optional `progress(phase, done,
total)` callback and leave drawing to the caller.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from oram_store import (
    BucketCodec,
    OramParams,
    PathOram,
    Read,
    SqlBucketStore,
    StateRecord,
    Write,
)
from otrace.bench._support import (
    ProgressCallback,
    RssMeter,
    TempStore,
    Ticker,
    peak_rss_mib,
    settle,
)
from otrace.errors import ConfigError
from tee import Sealer

__all__ = [
    "FloorRun",
    "MixedOp",
    "OramBenchConfig",
    "OramBenchReport",
    "OtraceRun",
    "ProgressCallback",
    "PyOramRun",
    "RssMeter",
    "VariantResult",
    "measure_floor",
    "measure_otrace_batched",
    "measure_otrace_single",
    "mixed_workload",
    "peak_rss_mib",
    "run_oram_bench",
]

MixedOp = tuple[int, bool]  # (block id, is_write)

_SINGLE_TREE = "bench_single"
_BATCHED_TREE = "bench_batched"
_FLOOR_TREE = "bench_floor"
_BLOB_POOL = 64  # distinct random blobs the floor cycles through


@dataclass(frozen=True, slots=True)
class OramBenchConfig:
    """What to measure: geometry, workload size, batch size, and whether to include PyORAM."""

    blocks: int = 1 << 16
    block_size: int = 4096
    accesses: int = 2000
    batch: int = 64
    cache_levels: int = 6
    skip_pyoram: bool = False
    seed: int | None = None  # None: a fresh random workload each run

    def __post_init__(self) -> None:
        if self.accesses < 1:
            raise ConfigError(f"--accesses must be at least 1, got {self.accesses}")
        if not 1 <= self.batch <= self.blocks:
            raise ConfigError(
                f"--batch must be 1..{self.blocks} (distinct blocks per batch), got {self.batch}"
            )
        if self.cache_levels < 0:
            raise ConfigError(f"--cache-levels must be >= 0, got {self.cache_levels}")

    def params(self, tree_id: str, batch_size: int = 1) -> OramParams:
        """The otrace tree geometry for this run (validates N and B)."""
        return OramParams(
            tree_id, blocks=self.blocks, block_size=self.block_size, batch_size=batch_size
        )


@dataclass(frozen=True, slots=True)
class VariantResult:
    """`accesses` logical accesses served in `seconds` of wall time."""

    name: str
    accesses: int
    seconds: float

    @property
    def ops_per_s(self) -> float:
        return self.accesses / self.seconds

    @property
    def ms_per_op(self) -> float:
        return 1000.0 * self.seconds / self.accesses


@dataclass(frozen=True, slots=True)
class OtraceRun:
    """One otrace variant: its access timing plus what building its tree cost."""

    result: VariantResult
    init_s: float
    init_peak_rss_mib: float
    db_mib: float
    stash_peak: int


@dataclass(frozen=True, slots=True)
class PyOramRun:
    """PyORAM's access timing (as is, and fsync'ed per access), setup time and tree height."""

    result: VariantResult
    setup_s: float
    height: int
    durable: VariantResult


@dataclass(frozen=True, slots=True)
class FloorRun:
    """The storage floor for single accesses and for batches of K, and its table's load time."""

    single: VariantResult
    batched: VariantResult
    load_s: float


@dataclass(frozen=True, slots=True)
class OramBenchReport:
    """Everything one `otrace bench oram` run measured."""

    config: OramBenchConfig
    height: int
    single: OtraceRun
    batched: OtraceRun
    floor: FloorRun
    pyoram: PyOramRun | None
    otrace_peak_rss_mib: float
    peak_rss_mib: float

    @property
    def variants(self) -> list[VariantResult]:
        found = [self.single.result, self.batched.result]
        if self.pyoram is not None:
            found += [self.pyoram.result, self.pyoram.durable]
        return [*found, self.floor.single, self.floor.batched]

    def speedup_vs_pyoram(self, variant: VariantResult) -> float | None:
        """How many times more accesses per second than PyORAM (None without PyORAM)."""
        if self.pyoram is None:
            return None
        return variant.ops_per_s / self.pyoram.result.ops_per_s

    def floor_for(self, variant: VariantResult) -> VariantResult:
        """The floor with the same access pattern: batched for batched otrace, else single."""
        if variant in (self.batched.result, self.floor.batched):
            return self.floor.batched
        return self.floor.single

    def time_vs_floor(self, variant: VariantResult) -> float:
        """Time per access as a multiple of the storage floor's for the same pattern."""
        return variant.ms_per_op / self.floor_for(variant).ms_per_op

    def to_json(self) -> dict[str, float | int | None]:
        """Flat keys for dashboards and regression tracking."""
        c, py = self.config, self.pyoram
        return {
            "otrace_single_ops_per_s": self.single.result.ops_per_s,
            "otrace_batched_ops_per_s": self.batched.result.ops_per_s,
            "pyoram_ops_per_s": None if py is None else py.result.ops_per_s,
            "pyoram_fsync_ops_per_s": None if py is None else py.durable.ops_per_s,
            "floor_ops_per_s": self.floor.single.ops_per_s,
            "peak_rss_mib": self.peak_rss_mib,
            "init_s": self.single.init_s,
            "init_peak_rss_mib": self.single.init_peak_rss_mib,
            "otrace_peak_rss_mib": self.otrace_peak_rss_mib,
            "init_batched_s": self.batched.init_s,
            "floor_batched_ops_per_s": self.floor.batched.ops_per_s,
            "floor_load_s": self.floor.load_s,
            "pyoram_setup_s": None if py is None else py.setup_s,
            "single_vs_pyoram": self.speedup_vs_pyoram(self.single.result),
            "batched_vs_pyoram": self.speedup_vs_pyoram(self.batched.result),
            "single_time_vs_floor": self.time_vs_floor(self.single.result),
            "batched_time_vs_floor": self.time_vs_floor(self.batched.result),
            "db_mib": self.single.db_mib,
            "stash_peak_single": self.single.stash_peak,
            "stash_peak_batched": self.batched.stash_peak,
            "height": self.height,
            "pyoram_height": None if py is None else py.height,
            "blocks": c.blocks,
            "block_size": c.block_size,
            "accesses": c.accesses,
            "batch": c.batch,
            "cache_levels": c.cache_levels,
        }


# ------------------------------------------------------------------ the run


def run_oram_bench(
    config: OramBenchConfig, workdir: Path, progress: ProgressCallback | None = None
) -> OramBenchReport:
    """Measures every variant in turn; databases live (one at a time) in `workdir`."""
    rng = random.Random(config.seed)
    workload = mixed_workload(rng, config.blocks, config.accesses)
    payload = rng.randbytes(config.block_size)
    meter = RssMeter()
    single = measure_otrace_single(config, workdir, workload, payload, progress, meter)
    batched = measure_otrace_batched(config, workdir, rng, payload, progress, meter)
    floor = measure_floor(config, workdir, rng, progress)
    meter.mark()
    otrace_peak = meter.overall
    pyoram = None
    if not config.skip_pyoram:
        from otrace.bench._pyoram import measure_pyoram

        pyoram = measure_pyoram(config, workdir, workload, payload, progress)
    return OramBenchReport(
        config=config,
        height=config.params(_SINGLE_TREE).height,
        single=single,
        batched=batched,
        floor=floor,
        pyoram=pyoram,
        otrace_peak_rss_mib=otrace_peak,
        peak_rss_mib=meter.overall,
    )


def mixed_workload(rng: random.Random, blocks: int, count: int) -> list[MixedOp]:
    """`count` accesses to uniformly random blocks, each a write with probability 1/2."""
    return [(rng.randrange(blocks), rng.random() < 0.5) for _ in range(count)]


# ---------------------------------------------------------------- variants


def measure_otrace_single(
    config: OramBenchConfig,
    workdir: Path,
    workload: Sequence[MixedOp],
    payload: bytes,
    progress: ProgressCallback | None = None,
    meter: RssMeter | None = None,
) -> OtraceRun:
    """otrace with batch_size=1: one `read` or `write` call per access."""
    phase = "otrace single"
    with TempStore(workdir, _SINGLE_TREE) as temp:
        oram, init_s, init_rss = _create_tree(
            config, temp.store, _SINGLE_TREE, 1, progress, meter or RssMeter()
        )
        settle(temp.store)
        tick = Ticker(progress, f"{phase}: accesses", len(workload))
        start = time.perf_counter()
        for i, (block, is_write) in enumerate(workload):
            if is_write:
                oram.write(block, payload)
            else:
                oram.read(block)
            tick(i + 1)
        seconds = time.perf_counter() - start
        result = VariantResult(phase, len(workload), seconds)
        return OtraceRun(result, init_s, init_rss, temp.size_mib(), oram.stats.stash_peak)


def measure_otrace_batched(
    config: OramBenchConfig,
    workdir: Path,
    rng: random.Random,
    payload: bytes,
    progress: ProgressCallback | None = None,
    meter: RssMeter | None = None,
) -> OtraceRun:
    """otrace with batch_size=K: `access_batch` calls of K distinct random blocks."""
    phase = f"otrace batched (K={config.batch})"
    batches = _batched_workload(rng, config, payload)
    with TempStore(workdir, _BATCHED_TREE) as temp:
        oram, init_s, init_rss = _create_tree(
            config, temp.store, _BATCHED_TREE, config.batch, progress, meter or RssMeter()
        )
        settle(temp.store)
        tick = Ticker(progress, f"{phase}: accesses", config.accesses)
        done = 0
        start = time.perf_counter()
        for ops in batches:
            oram.access_batch(ops)
            done += len(ops)
            tick(done)
        seconds = time.perf_counter() - start
        result = VariantResult(phase, config.accesses, seconds)
        return OtraceRun(result, init_s, init_rss, temp.size_mib(), oram.stats.stash_peak)


def measure_floor(
    config: OramBenchConfig,
    workdir: Path,
    rng: random.Random,
    progress: ProgressCallback | None = None,
) -> FloorRun:
    """The storage work of otrace's accesses with no crypto and no ORAM logic.

    Same store class, pragmas, row count and blob size as otrace's trees. Per
    transaction: one SELECT ... IN of the uncached buckets (level >= C) of
    random paths, then one UPDATE per bucket of those paths with random blobs.
    The single-access pattern uses one path per access; the batched pattern the
    union of K paths per K accesses, as `access_batch` does.
    """
    params = config.params(_FLOOR_TREE)
    blob_size = BucketCodec(params, bytes(32)).blob_size
    pool = [rng.randbytes(blob_size) for _ in range(_BLOB_POOL)]
    with TempStore(workdir, _FLOOR_TREE) as temp:
        start = time.perf_counter()
        _load_floor_table(temp.store, params, pool, progress)
        load_s = time.perf_counter() - start
        settle(temp.store)
        floor = _FloorPattern(temp.store, params, config.cache_levels, pool, rng)
        single = floor.run("storage floor", config.accesses, 1, progress)
        settle(temp.store)
        batched = floor.run(
            f"storage floor (K={config.batch})", config.accesses, config.batch, progress
        )
    return FloorRun(single, batched, load_s)


class _FloorPattern:
    """Replays the row reads and writes of random path accesses on a loaded table."""

    def __init__(
        self,
        store: SqlBucketStore,
        params: OramParams,
        cache_levels: int,
        pool: list[bytes],
        rng: random.Random,
    ) -> None:
        self._store, self._params, self._pool, self._rng = store, params, pool, rng
        self._first_uncached = 1 << min(cache_levels, params.height + 1)
        self._version = 0

    def run(
        self, name: str, accesses: int, paths: int, progress: ProgressCallback | None
    ) -> VariantResult:
        """`accesses` logical accesses, `paths` random paths per transaction."""
        tick = Ticker(progress, f"{name}: accesses", accesses)
        done = 0
        start = time.perf_counter()
        while done < accesses:
            self._transaction(paths)
            done = min(accesses, done + paths)
            tick(done)
        return VariantResult(name, accesses, time.perf_counter() - start)

    def _transaction(self, paths: int) -> None:
        p, pool = self._params, self._pool
        self._version += 1
        nodes: set[int] = set()
        for _ in range(paths):
            nodes.update(_path(p.height, self._rng.randrange(p.leaves)))
        ordered = sorted(nodes)
        rows = [(n, self._version, pool[(self._version + n) % _BLOB_POOL]) for n in ordered]
        with self._store.transaction(p.tree_id) as txn:
            txn.read_buckets([n for n in ordered if n >= self._first_uncached])
            txn.write_buckets(rows)


# ----------------------------------------------------------------- helpers


def _create_tree(
    config: OramBenchConfig,
    store: SqlBucketStore,
    tree_id: str,
    batch_size: int,
    progress: ProgressCallback | None,
    meter: RssMeter,
) -> tuple[PathOram, float, float]:
    """Builds and opens a fresh tree; returns it, its build time and the build's peak RSS."""
    label = "otrace single" if batch_size == 1 else f"otrace batched (K={batch_size})"
    params = config.params(tree_id, batch_size)
    report = None
    if progress is not None:
        # `create` reports once per finished level, the first after half the tree.
        report = _phase(progress, f"{label}: init")
        report(0, params.buckets)
    meter.mark()
    start = time.perf_counter()
    oram = PathOram.create(
        store,
        params,
        key=os.urandom(32),
        sealer=Sealer.from_key(os.urandom(32)),
        cache_levels=config.cache_levels,
        progress=report,
    )
    init_s = time.perf_counter() - start
    return oram, init_s, meter.mark()


def _batched_workload(
    rng: random.Random, config: OramBenchConfig, payload: bytes
) -> list[list[Read | Write]]:
    """`accesses` mixed operations cut into batches of `batch` distinct random blocks."""
    batches: list[list[Read | Write]] = []
    left = config.accesses
    while left > 0:
        size = min(config.batch, left)
        blocks = rng.sample(range(config.blocks), size)
        batches.append([Write(b, payload) if rng.random() < 0.5 else Read(b) for b in blocks])
        left -= size
    return batches


def _load_floor_table(
    store: SqlBucketStore,
    params: OramParams,
    pool: list[bytes],
    progress: ProgressCallback | None,
) -> None:
    total = params.buckets
    tick = Ticker(progress, "storage floor: load", total)

    def rows() -> Iterator[tuple[int, int, bytes]]:
        # Leaves first, root last, as PathOram.create writes its tree: the file
        # layout, and so which levels a larger-than-RAM page cache still holds
        # after the load, must match otrace's or the floor reads more from disk.
        done = 0
        for level in range(params.height, -1, -1):
            for idx in range(1 << level, 2 << level):
                done += 1
                tick(done)
                yield idx, 0, pool[idx % _BLOB_POOL]

    # The metadata and state rows only satisfy the interface; the floor never reads them.
    store.create_tree(
        params.tree_id,
        rows(),
        b"floor",
        lambda: StateRecord(0, 1, b""),
    )


def _path(height: int, leaf: int) -> list[int]:
    """Heap indices of the path from the root (1) to `leaf`, ascending."""
    node = (1 << height) + leaf
    return [node >> shift for shift in range(height, -1, -1)]


def _phase(progress: ProgressCallback, phase: str) -> Callable[[int, int], None]:
    return lambda done, total: progress(phase, done, total)
