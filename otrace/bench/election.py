"""SSLE latency: one term's critical path, timed phase by phase, for several cluster sizes.

    report = run_election_bench(ElectionBenchConfig(replicas=(3, 16, 64), terms=50))
    print(report.to_json()["n64_shuffle_median_ms"])

Each term runs the whole protocol in this process (no SQL, no network): every
replica makes a tracker, the submissions are checked, the shuffler re-randomises,
permutes and quotes, the shuffle is checked, the owner recognises its slot,
proves, and the claim is checked. Phases are timed separately; "total" is the
critical path of one term (see `PHASES`).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from tee import Platform, Verifier
from tee.ssle import (
    ReplicaKey,
    Shuffler,
    TrackerSubmission,
    verify_claim,
    verify_shuffle,
    verify_submission,
)

__all__ = [
    "PHASES",
    "ElectionBenchConfig",
    "ElectionBenchReport",
    "PhaseStats",
    "run_election_bench",
]

PHASES = {
    "tracker": "one replica makes its tracker and proof",
    "check trackers": "all n tracker proofs checked (the store does this)",
    "shuffle": "the enclave re-randomises and permutes n trackers and quotes them",
    "check shuffle": "quote and input list checked, beacon and slot derived",
    "recognise": "the owner's k*R' == S' check at the selected slot",
    "prove": "the owner's claim (recognise again + DLEQ proof)",
    "verify": "a replica checks the claim against the registered key",
    "total": "the sum of the phases above, per term",
}
_MEASUREMENT = hashlib.sha256(b"otrace bench shuffler").digest()

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class ElectionBenchConfig:
    replicas: tuple[int, ...] = (3, 16, 64)
    terms: int = 50

    def __post_init__(self) -> None:
        if not self.replicas or min(self.replicas) < 1 or self.terms < 1:
            raise ValueError("need at least one replica count >= 1 and one term")


@dataclass(frozen=True, slots=True)
class PhaseStats:
    median_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> PhaseStats:
        ordered = sorted(seconds)
        p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
        return cls(statistics.median(ordered) * 1e3, p99 * 1e3)


@dataclass(frozen=True, slots=True)
class ElectionBenchReport:
    config: ElectionBenchConfig
    # replicas -> phase -> stats
    results: dict[int, dict[str, PhaseStats]]

    def to_json(self) -> dict[str, object]:
        """Flat keys: n<replicas>_<phase>_{median,p99}_ms, plus the configuration."""
        flat: dict[str, object] = {
            "replicas": list(self.config.replicas),
            "terms": self.config.terms,
        }
        for n, phases in self.results.items():
            for phase, stats in phases.items():
                key = f"n{n}_{phase.replace(' ', '_')}"
                flat[f"{key}_median_ms"] = stats.median_ms
                flat[f"{key}_p99_ms"] = stats.p99_ms
        return flat


def run_election_bench(
    config: ElectionBenchConfig, progress: ProgressCallback | None = None
) -> ElectionBenchReport:
    """Time `config.terms` terms for each cluster size, one size after the other."""
    platform = Platform.from_secrets(os.urandom(32), os.urandom(32), os.urandom(32))
    shuffler = Shuffler(platform, platform.identity(_MEASUREMENT, 1))
    verifier = Verifier(
        trusted_platform_keys=[platform.attestation_public_key],
        allowed_measurements=[_MEASUREMENT],
        allow_simulated=True,
    )
    results: dict[int, dict[str, PhaseStats]] = {}
    for n in config.replicas:
        keys = [ReplicaKey.generate(f"replica-{i}") for i in range(n)]
        samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
        for term in range(1, config.terms + 1):
            for phase, seconds in _one_term(term, keys, shuffler, verifier).items():
                samples[phase].append(seconds)
            samples["total"].append(sum(samples[p][-1] for p in PHASES if p != "total"))
            if progress is not None:
                progress(f"{n} replicas", term, config.terms)
        results[n] = {phase: PhaseStats.of(values) for phase, values in samples.items()}
    return ElectionBenchReport(config, results)


def _one_term(
    term: int, keys: list[ReplicaKey], shuffler: Shuffler, verifier: Verifier
) -> dict[str, float]:
    clock = time.perf_counter
    times: dict[str, float] = {}
    start = clock()
    first = keys[0].tracker_for(term)
    times["tracker"] = clock() - start
    submissions: list[TrackerSubmission] = [first, *(key.tracker_for(term) for key in keys[1:])]
    start = clock()
    for key, submission in zip(keys, submissions, strict=True):
        verify_submission(submission, key.public_key, term)
    times["check trackers"] = clock() - start
    inputs = tuple(s.tracker for s in submissions)
    start = clock()
    published = shuffler.shuffle(term, inputs)
    times["shuffle"] = clock() - start
    start = clock()
    verify_shuffle(published, term=term, inputs=inputs, verifier=verifier)
    draw = published.draw(term.to_bytes(8, "big") * 4)
    times["check shuffle"] = clock() - start
    owner = next(key for key in keys if key.recognises(draw.tracker))  # untimed search
    start = clock()
    owner.recognises(draw.tracker)
    times["recognise"] = clock() - start
    start = clock()
    claim = owner.claim(draw)
    times["prove"] = clock() - start
    start = clock()
    verify_claim(claim, draw, owner.public_key)
    times["verify"] = clock() - start
    return times
