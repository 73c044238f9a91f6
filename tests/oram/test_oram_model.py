"""Hypothesis state machine: the ORAM behaves like a dict, across batches and reopens.

Invariants after every step: the stash respects its bound, and every real block
is in exactly one place (the stash, or one bucket on the path to its leaf).
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from oram_store import PathOram, Read, SqlBucketStore, Write
from tests.oram.helpers import new_oram, reopen

BLOCKS = 40
SIZE = 32
BATCH = 4

blocks = st.integers(min_value=0, max_value=BLOCKS - 1)
payloads = st.binary(min_size=SIZE, max_size=SIZE)
ops = st.lists(
    st.one_of(st.builds(Read, blocks), st.builds(Write, blocks, payloads)), min_size=1, max_size=6
).filter(lambda xs: len({op.block for op in xs}) <= BATCH)


class OramMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="otrace-hyp-")
        self.store = SqlBucketStore(f"sqlite:///{self.dir}/s.db")
        self.oram: PathOram = new_oram(
            self.store,
            blocks=BLOCKS,
            block_size=SIZE,
            batch_size=BATCH,
            cache_levels=2,
            seed=None,
            checkpoint_every=5,
            stash_bound=20,
        )
        self.model: dict[int, bytes] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(b=blocks, data=payloads)
    def write(self, b: int, data: bytes) -> None:
        self.oram.write(b, data)
        self.model[b] = data

    @rule(b=blocks)
    def read(self, b: int) -> None:
        assert self.oram.read(b) == self.model.get(b, bytes(SIZE))

    @rule(batch=ops)
    def batch(self, batch: list[Read | Write]) -> None:
        results = self.oram.access_batch(batch)
        for op, result in zip(batch, results, strict=True):
            if isinstance(op, Write):
                assert result is None
                self.model[op.block] = op.data
            else:
                assert result == self.model.get(op.block, bytes(SIZE))

    @precondition(lambda self: self.oram.seq > 0)
    @rule(cache_levels=st.integers(min_value=0, max_value=4))
    def reopen(self, cache_levels: int) -> None:
        self.oram = reopen(self.oram, cache_levels=cache_levels)

    @invariant()
    def stash_bounded(self) -> None:
        assert len(self.oram.stash_blocks()) <= self.oram.params.stash_bound

    @invariant()
    def every_block_in_exactly_one_place(self) -> None:
        report = self.oram.audit()  # raises on a duplicate or misplaced block
        assert report.blocks_in_tree + report.blocks_in_stash == len(self.model)


OramMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestOramModel = OramMachine.TestCase


class CrowdedOramMachine(OramMachine):
    """Two slots a bucket: the stash is often non-empty, so deltas carry it across reopens."""

    def __init__(self) -> None:
        super().__init__()
        self.oram = new_oram(
            SqlBucketStore(f"sqlite:///{self.dir}/crowded.db"),
            blocks=BLOCKS,
            block_size=SIZE,
            batch_size=BATCH,
            cache_levels=1,
            seed=None,
            checkpoint_every=7,
            slots=2,
            stash_bound=BLOCKS,
        )


CrowdedOramMachine.TestCase.settings = OramMachine.TestCase.settings
TestCrowdedOramModel = CrowdedOramMachine.TestCase
