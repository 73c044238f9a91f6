"""Benchmarks behind `otrace bench`: side-by-side measurements, never timed tests.

    report = run_oram_bench(OramBenchConfig(blocks=1 << 16), Path("/tmp/bench"))
    print(report.to_json()["otrace_single_ops_per_s"])

The measurement functions return frozen results and report progress through
an optional callback; drawing tables and progress bars is the CLI's job.
"""

from otrace.bench.oram import (
    FloorRun,
    OramBenchConfig,
    OramBenchReport,
    OtraceRun,
    ProgressCallback,
    PyOramRun,
    RssMeter,
    VariantResult,
    run_oram_bench,
)

__all__ = [
    "FloorRun",
    "OramBenchConfig",
    "OramBenchReport",
    "OtraceRun",
    "ProgressCallback",
    "PyOramRun",
    "RssMeter",
    "VariantResult",
    "run_oram_bench",
]
