"""`otrace soak`: crash recovery under load, and the process harness the reliability
tests share.

    report = run_soak(SoakConfig(root=Path("soak"), kills=10))
    report.lost_spans        # acknowledged spans missing after every restart: must be 0

Pieces: `_serve` (`otrace serve` as a killable child on fixed ports, its RSS),
`_soak` (kill / restart loop under `otrace.loadtest` load, read-back through
the query API), `_cli` (the command and its report).
"""

from otrace.soak._serve import ServeOptions, ServeProcess, free_port, rss_of_tree
from otrace.soak._soak import SoakConfig, SoakReport, run_soak

__all__ = [
    "ServeOptions",
    "ServeProcess",
    "SoakConfig",
    "SoakReport",
    "free_port",
    "rss_of_tree",
    "run_soak",
]
