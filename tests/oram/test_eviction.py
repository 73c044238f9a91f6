"""Greedy eviction: what it may leave in the stash, and the stash it needs at 50% utilisation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oram_store import OramParams
from oram_store._eviction import evict, path_nodes


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), paths=st.integers(1, 4), stash_size=st.integers(0, 12))
def test_only_stash_and_remapped_blocks_are_left_over(
    seed: int, paths: int, stash_size: int
) -> None:
    """Blocks read from the paths and not remapped always go back into the tree.

    This is what lets a state delta carry only the remapped blocks' data.
    """
    rnd = random.Random(seed)
    height, slots = 4, 2
    leaves = [rnd.randrange(1 << height) for _ in range(paths)]
    nodes = path_nodes(height, leaves)
    leaf_of: dict[int, int] = {}
    resident: set[int] = set()
    next_id = 0
    for node in nodes:  # a valid tree: each block on its own leaf's path
        for _ in range(rnd.randrange(slots + 1)):
            level = node.bit_length() - 1
            below = rnd.randrange(1 << (height - level))
            leaf_of[next_id] = ((node << (height - level)) | below) - (1 << height)
            resident.add(next_id)
            next_id += 1
    stash = {}
    for _ in range(stash_size):
        leaf_of[next_id] = rnd.randrange(1 << height)
        stash[next_id] = b""
        next_id += 1
    remapped = set(rnd.sample(sorted(resident | set(stash)), min(paths, next_id)))
    for b in remapped:
        leaf_of[b] = rnd.randrange(1 << height)
    everything = resident | set(stash)
    placed, left = evict(height, slots, nodes, everything, leaf_of.__getitem__, resident - remapped)
    assert set(left) <= set(stash) | remapped
    assert sum(map(len, placed.values())) + len(left) == len(everything)
    for node, ids in placed.items():
        assert len(ids) <= slots
        for b in ids:  # every block on its own path
            assert ((1 << height) + leaf_of[b]) >> (height - (node.bit_length() - 1)) == node


def _max_stash(blocks: int, accesses: int, seed: int) -> int:
    """Path ORAM over an in-memory tree with the real `evict` (Z=4, 50% utilisation)."""
    p = OramParams("sim", blocks=blocks)
    rnd = random.Random(seed)
    position = [rnd.randrange(p.leaves) for _ in range(blocks)]
    tree: dict[int, list[int]] = {}
    stash: set[int] = set()
    peak = 0
    for step in range(blocks + accesses):
        block = step if step < blocks else rnd.randrange(blocks)  # fill first, then random
        nodes = path_nodes(p.height, [position[block]])
        resident = {b for n in nodes for b in tree.pop(n, [])}
        stash |= resident | {block}
        position[block] = rnd.randrange(p.leaves)
        resident.discard(block)
        placed, left = evict(p.height, p.slots, nodes, stash, position.__getitem__, resident)
        tree.update(placed)
        stash = set(left)
        if step >= blocks:
            peak = max(peak, len(stash))
    return peak


def test_stash_stays_far_below_its_bound_at_full_occupancy() -> None:
    assert p_util(1 << 12) == pytest.approx(0.5, abs=0.001)
    assert _max_stash(1 << 12, 30_000, seed=1) < 25  # bound: 100


@pytest.mark.slow
def test_stash_stays_far_below_its_bound_over_a_million_accesses() -> None:
    # The C simulator (tools/stash_sim.c) runs 5e7 accesses; this checks it
    # agrees with the real eviction code (its maximum over 5e7 accesses was 24).
    assert _max_stash(1 << 14, 1_000_000, seed=2) < 30


def p_util(blocks: int) -> float:
    p = OramParams("sim", blocks=blocks)
    return blocks / (p.slots * p.buckets)
