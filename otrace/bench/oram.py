"""Side-by-side Path ORAM measurements: otrace single and batched, PyORAM, a storage floor.

Every variant runs in this process on the same geometry (N blocks of B bytes,
C cached levels) and, where it makes sense, on the same random sequence of
mixed reads and writes, so the printed ratios compare like with like on one
machine at one moment. otrace and the storage floor alternate in rounds (the
floor's table stays loaded while each otrace tree is measured), so load from
other work on a shared disk hits both alike; PyORAM runs afterwards. Each
database lives in the work directory and is deleted as soon as it has been
measured: at most two trees (the floor's and one otrace tree) occupy the
disk at a time.

The functions only measure: they take an optional `progress(phase, done,
total)` callback and leave drawing to the caller.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from oram_store import (
    DEFAULT_BLOCK_SIZE,
    OramParams,
    PathOram,
    Read,
    SqlBucketStore,
    Write,
)
from otrace.bench._floor import FloorPattern, load_floor
from otrace.bench._support import (
    ProgressCallback,
    RssMeter,
    TempStore,
    Ticker,
    peak_rss_mib,
    settle,
)
from otrace.errors import ConfigError
from tee import MonotonicCounter, Platform, Sealer

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
_ROUNDS = 20  # otrace and its floor alternate in this many rounds


@dataclass(frozen=True, slots=True)
class OramBenchConfig:
    """What to measure: geometry, workload size, batch size, and whether to include PyORAM."""

    blocks: int = 1 << 16
    block_size: int = DEFAULT_BLOCK_SIZE
    accesses: int = 2000
    batch: int = 64
    cache_levels: int = 6
    group: int = 8  # batches a commit in the grouped variant (`PathOram.grouped`)
    skip_pyoram: bool = False
    seed: int | None = None  # None: a fresh random workload each run

    def __post_init__(self) -> None:
        if self.accesses < 1:
            raise ConfigError(f"--accesses must be at least 1, got {self.accesses}")
        if not 1 <= self.batch <= self.blocks:
            raise ConfigError(
                f"--batch must be 1..{self.blocks} (distinct blocks per batch), got {self.batch}"
            )
        if self.group < 1:
            raise ConfigError(f"--group must be at least 1, got {self.group}")
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
    grouped: VariantResult  # batches of K, `group` a commit, alternating with `batched`
    floor: FloorRun
    pyoram: PyOramRun | None
    otrace_peak_rss_mib: float
    peak_rss_mib: float

    @property
    def variants(self) -> list[VariantResult]:
        found = [self.single.result, self.batched.result, self.grouped]
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
        if variant in (self.batched.result, self.grouped, self.floor.batched):
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
            "otrace_grouped_ops_per_s": self.grouped.ops_per_s,
            "grouped_vs_batched": self.grouped.ops_per_s / self.batched.result.ops_per_s,
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
            "group": c.group,
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
    with TempStore(workdir, _FLOOR_TREE) as temp:
        floor, load_s = load_floor(
            temp.store, config.params(_FLOOR_TREE), config.cache_levels, rng, progress
        )
        single, floor_single = measure_otrace_single(
            config, workdir, workload, payload, floor, progress, meter
        )
        batched, grouped, floor_batched = measure_otrace_batched(
            config, workdir, rng, payload, floor, progress, meter
        )
    floor_run = FloorRun(floor_single, floor_batched, load_s)
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
        grouped=grouped,
        floor=floor_run,
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
    floor: FloorPattern,
    progress: ProgressCallback | None = None,
    meter: RssMeter | None = None,
) -> tuple[OtraceRun, VariantResult]:
    """otrace with batch_size=1 (one `read` or `write` call per access) and its floor.

    The two alternate in rounds of A/20 accesses, so a disk that other work
    slows down slows both alike and their ratio holds.
    """
    phase = "otrace single"
    with (
        TempStore(workdir, _SINGLE_TREE) as temp,
        _platform_counter(workdir, _SINGLE_TREE) as counter,
    ):
        oram, init_s, init_rss = _create_tree(
            config, temp.store, _SINGLE_TREE, 1, progress, meter or RssMeter(), counter
        )
        settle(temp.store)
        settle(floor.store)
        tick = Ticker(progress, f"{phase} and storage floor: accesses", len(workload))
        seconds = floor_seconds = 0.0
        for start in range(0, len(workload), _round(len(workload))):
            chunk = workload[start : start + _round(len(workload))]
            began = time.perf_counter()
            for block, is_write in chunk:
                if is_write:
                    oram.write(block, payload)
                else:
                    oram.read(block)
            seconds += time.perf_counter() - began
            floor_seconds += floor.time(len(chunk), 1)
            tick(start + len(chunk))
        result = VariantResult(phase, len(workload), seconds)
        run = OtraceRun(result, init_s, init_rss, temp.size_mib(), oram.stats.stash_peak)
    return run, VariantResult("storage floor", len(workload), floor_seconds)


def measure_otrace_batched(
    config: OramBenchConfig,
    workdir: Path,
    rng: random.Random,
    payload: bytes,
    floor: FloorPattern,
    progress: ProgressCallback | None = None,
    meter: RssMeter | None = None,
) -> tuple[OtraceRun, VariantResult, VariantResult]:
    """otrace with batch_size=K (`access_batch` calls of K distinct random blocks), the
    same with `group` batches a commit (`grouped`), and their floor.

    Alternating with the floor in rounds, as `measure_otrace_single`; within a round
    half the batches commit one by one and half in groups, which goes first in turn.
    """
    phase = f"otrace batched (K={config.batch})"
    batches = _batched_workload(rng, config, payload)
    with (
        TempStore(workdir, _BATCHED_TREE) as temp,
        _platform_counter(workdir, _BATCHED_TREE) as counter,
    ):
        oram, init_s, init_rss = _create_tree(
            config, temp.store, _BATCHED_TREE, config.batch, progress, meter or RssMeter(), counter
        )
        settle(temp.store)
        settle(floor.store)
        tick = Ticker(progress, f"{phase} and its floor: accesses", config.accesses)
        done = alone = together = 0
        seconds = grouped_s = floor_seconds = 0.0
        per_round = max(2, _round(config.accesses) // config.batch)
        for start in range(0, len(batches), per_round):
            chunk = batches[start : start + per_round]
            half = len(chunk) // 2
            parts = [(chunk[:half], 1), (chunk[half:], config.group)]
            for part, group in parts if start // per_round % 2 else parts[::-1]:
                began = time.perf_counter()
                for first in range(0, len(part), group):
                    with oram.grouped() if group > 1 else nullcontext():
                        for ops in part[first : first + group]:
                            oram.access_batch(ops)
                elapsed = time.perf_counter() - began
                if group > 1:
                    grouped_s += elapsed
                    together += sum(map(len, part))
                else:
                    seconds += elapsed
                    alone += sum(map(len, part))
            accesses = sum(map(len, chunk))
            floor_seconds += floor.time(accesses, config.batch)
            done += accesses
            tick(done)
        result = VariantResult(phase, alone, seconds)
        grouped = VariantResult(
            f"otrace grouped (K={config.batch}, {config.group} a commit)", together, grouped_s
        )
        run = OtraceRun(result, init_s, init_rss, temp.size_mib(), oram.stats.stash_peak)
    floor_name = f"storage floor (K={config.batch})"
    return run, grouped, VariantResult(floor_name, config.accesses, floor_seconds)


def _round(accesses: int) -> int:
    return max(1, accesses // _ROUNDS)


# ----------------------------------------------------------------- helpers


def _create_tree(
    config: OramBenchConfig,
    store: SqlBucketStore,
    tree_id: str,
    batch_size: int,
    progress: ProgressCallback | None,
    meter: RssMeter,
    counter: MonotonicCounter,
) -> tuple[PathOram, float, float]:
    """Builds and opens a fresh tree; returns it, its build time and the build's peak RSS.

    The tree gets a monotonic counter, as in `otrace serve`, so its per-commit
    cost (a write after every commit, fsync'ed at checkpoints) is measured.
    """
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
        counter=counter,
        cache_levels=config.cache_levels,
        progress=report,
    )
    init_s = time.perf_counter() - start
    return oram, init_s, meter.mark()


@contextmanager
def _platform_counter(workdir: Path, tree_id: str) -> Iterator[MonotonicCounter]:
    """A monotonic counter in a throwaway platform directory beside the database."""
    directory = workdir / f"{tree_id}-platform"
    try:
        yield MonotonicCounter(Platform.open(directory), f"oram-{tree_id}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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


def _phase(progress: ProgressCallback, phase: str) -> Callable[[int, int], None]:
    return lambda done, total: progress(phase, done, total)
