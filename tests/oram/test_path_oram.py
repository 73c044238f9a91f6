"""Path ORAM behaviour: correctness, padding, obliviousness of the work done, stash bound."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
from collections.abc import Callable

import pytest
from scipy.stats import chisquare

from oram_store import OramParams, PathOram, Read, SqlBucketStore, Write
from oram_store._oram import seal_meta
from otrace.errors import ConfigError, FencingError, InvalidRequest, StashOverflow
from tests.oram.helpers import MemoryCounter, TracingStore, block, new_oram, reopen

MakeStore = Callable[..., SqlBucketStore]


def test_read_after_write_survives_reopen(store_url: str, make_store: MakeStore) -> None:
    oram = new_oram(make_store(store_url), blocks=100, batch_size=3)
    expected = {b: block(b * 7 + 1) for b in range(0, 100, 3)}
    for b, data in expected.items():
        oram.write(b, data)
    again = reopen(oram, cache_levels=4)
    for b in range(100):
        assert again.read(b) == expected.get(b, bytes(64))
    assert again.audit().blocks_in_tree + len(again.stash_blocks()) == len(expected)


def test_batch_applies_operations_in_order_even_on_one_block(
    store_url: str, make_store: MakeStore
) -> None:
    oram = new_oram(make_store(store_url), batch_size=4)
    results = oram.access_batch([Read(5), Write(5, block(1)), Read(5), Write(5, block(2)), Read(9)])
    assert results == [bytes(64), None, block(1), None, bytes(64)]
    assert oram.read(5) == block(2)


def test_bad_requests_are_refused_and_change_nothing(store_url: str, make_store: MakeStore) -> None:
    oram = new_oram(make_store(store_url), batch_size=2)
    oram.write(1, block(1))
    seq = oram.seq
    with pytest.raises(InvalidRequest, match=r"block id 64 is outside 0\.\.63"):
        oram.read(64)
    with pytest.raises(InvalidRequest, match="block id -1"):
        oram.read(-1)
    with pytest.raises(InvalidRequest, match="must be exactly 64 bytes, got 3"):
        oram.write(2, b"abc")
    with pytest.raises(InvalidRequest, match="3 distinct blocks in one batch of 2 paths"):
        oram.access_batch([Read(1), Read(2), Read(3)])
    with pytest.raises(InvalidRequest, match="2 distinct blocks in one batch of 1 paths"):
        oram.access_batch([Read(1), Read(2)], paths=1)
    with pytest.raises(InvalidRequest, match="paths must be between 1 and the batch size 2"):
        oram.access_batch([Read(1)], paths=3)
    assert oram.seq == seq
    assert oram.read(1) == block(1)


def test_every_logical_access_reads_and_writes_one_whole_path(
    store_url: str, make_store: MakeStore
) -> None:
    store = make_store(store_url, TracingStore)
    oram = new_oram(store, blocks=256, cache_levels=0)
    store.trace.reads.clear()
    height = oram.params.height
    for i in range(50):
        oram.write(i % 7, block(i)) if i % 2 else oram.read(i % 11)
    leaf_base = 1 << height
    for read, written in zip(store.trace.reads, store.trace.writes, strict=True):
        assert len(read) == height + 1
        assert sorted(idx for idx, _, _ in written) == sorted(read)
        leaf = max(read)
        assert leaf >= leaf_base
        assert sorted(read) == sorted(leaf >> (height - lvl) for lvl in range(height + 1))


def test_batches_are_padded_to_the_batch_size(store_url: str, make_store: MakeStore) -> None:
    store = make_store(store_url, TracingStore)
    oram = new_oram(store, blocks=1 << 12, batch_size=8, cache_levels=0)
    height = oram.params.height
    for real in (1, 3, 8):
        store.trace.reads.clear()
        oram.access_batch([Read(b) for b in range(real)])
        leaves = {n for n in store.trace.reads[0] if n >= 1 << height}
        # Eight random leaves of 4096 collide rarely: the union has ~8 leaf buckets
        # whether 1, 3 or 8 accesses were real.
        assert 7 <= len(leaves) <= 8


def test_a_narrower_batch_is_padded_to_its_own_width(store_url: str, make_store: MakeStore) -> None:
    store = make_store(store_url, TracingStore)
    oram = new_oram(store, blocks=1 << 12, batch_size=8, cache_levels=0)
    oram.write(5, block(5))
    height = oram.params.height
    for real in (1, 4):
        store.trace.reads.clear()
        got = oram.access_batch([Read(b) for b in range(5, 5 + real)], paths=4)
        assert got[0] == block(5)
        leaves = {n for n in store.trace.reads[0] if n >= 1 << height}
        assert 3 <= len(leaves) <= 4


def test_cached_levels_are_written_but_never_read(store_url: str, make_store: MakeStore) -> None:
    store = make_store(store_url, TracingStore)
    oram = new_oram(store, blocks=256, cache_levels=3)
    store.trace.reads.clear()
    for b in range(20):
        oram.write(b, block(b))
    for read, written in zip(store.trace.reads, store.trace.writes, strict=True):
        assert min(read) >= 8
        assert len(read) == oram.params.height + 1 - 3
        assert 1 in {idx for idx, _, _ in written}  # the cached root is written through
        assert len(written) == oram.params.height + 1


def test_reads_and_writes_look_identical_to_the_storage(
    store_url: str, make_store: MakeStore
) -> None:
    store = make_store(store_url, TracingStore)
    oram = new_oram(store, blocks=128, batch_size=2)
    oram.access_batch([Read(3)])
    oram.access_batch([Write(3, block(9)), Write(4, block(8))])
    t = store.trace
    height, cached = oram.params.height, 2
    for read, written in zip(t.reads[1:], t.writes, strict=True):
        # Both batches: two whole random paths, the uncached part read, all of it written.
        leaves = [n for n in read if n >= 1 << height]
        assert 1 <= len(leaves) <= 2
        paths = {leaf >> (height - lvl) for leaf in leaves for lvl in range(height + 1)}
        assert sorted(read) == sorted(n for n in paths if n >= 1 << cached)
        assert sorted(idx for idx, _, _ in written) == sorted(paths)
    assert len({len(blob) for rows in t.writes for _, _, blob in rows}) == 1
    assert len({len(s.blob) for s in t.states}) == 1
    blobs = [blob for rows in t.writes for *_, blob in rows] + [s.blob for s in t.states]
    assert all(block(9) not in blob and block(8) not in blob for blob in blobs)


# The engine is seeded, so every backend is asked for the same paths in the same order:
# this test and test_stash_stays_small_under_load run on SQLite only (on PostgreSQL they
# recomputed the same figures from identical reads, three times slower).
def test_leaves_read_are_uniform(sqlite_url: str, make_store: MakeStore) -> None:
    store = make_store(sqlite_url, TracingStore)
    oram = new_oram(store, blocks=32, block_size=16, cache_levels=0, seed=7)
    store.trace.reads.clear()
    rnd = random.Random(3)
    # A skewed workload: half of all accesses hit block 0.
    for _ in range(3200):
        b = 0 if rnd.random() < 0.5 else rnd.randrange(32)
        oram.write(b, bytes(16)) if rnd.random() < 0.5 else oram.read(b)
    base = 1 << oram.params.height
    counts = collections.Counter(max(r) - base for r in store.trace.reads)
    observed = [counts.get(leaf, 0) for leaf in range(oram.params.leaves)]
    assert chisquare(observed).pvalue > 0.01


def test_stash_overflow_raises_and_commits_nothing(store_url: str, make_store: MakeStore) -> None:
    oram = new_oram(
        make_store(store_url),
        blocks=64,
        block_size=16,
        slots=1,
        stash_bound=2,
        cache_levels=0,
    )
    written: dict[int, bytes] = {}
    with pytest.raises(StashOverflow, match="above its bound of 2; the batch was not committed"):
        for b in range(64):
            data = bytes([b]) * 16
            oram.write(b, data)
            written[b] = data
    seq = oram.seq
    again = reopen(oram, cache_levels=0)
    assert again.seq == seq
    assert len(again.stash_blocks()) <= 2
    report = again.audit()
    assert report.blocks_in_tree + report.blocks_in_stash == len(written)


# SQLite only: see test_leaves_read_are_uniform.
def test_stash_stays_small_under_load(sqlite_url: str, make_store: MakeStore) -> None:
    oram = new_oram(make_store(sqlite_url), blocks=256, block_size=16)
    rnd = random.Random(5)
    for _ in range(1500):
        oram.write(rnd.randrange(256), bytes(16))
    assert oram.stats.stash_peak < 30  # the bound (100) is far away


def test_creation_is_one_streaming_pass_without_path_accesses(
    store_url: str, make_store: MakeStore
) -> None:
    store = make_store(store_url, TracingStore)
    oram = new_oram(store, blocks=4096, cache_levels=0)
    assert store.trace.reads == [] and store.trace.writes == []
    assert oram.audit().buckets == 2 * 1024 - 1  # 4096 blocks in 1024 leaves of Z=4


def test_state_is_checkpointed_and_old_records_pruned(
    store_url: str, make_store: MakeStore
) -> None:
    store = make_store(store_url)
    oram = new_oram(store, checkpoint_every=8)
    for i in range(21):
        oram.write(i % 64, block(i))
    with store.transaction("t") as txn:
        records = txn.load_state()
    assert [r.seq for r in records] == [16, 17, 18, 19, 20, 21]
    assert reopen(oram).read(20) == block(20)


def test_creating_twice_or_opening_nothing_is_a_clear_error(
    store_url: str, make_store: MakeStore
) -> None:
    store = make_store(store_url)
    oram = new_oram(store)
    with pytest.raises(Exception, match="already exists"):
        new_oram(store)
    with pytest.raises(ConfigError, match="no complete ORAM tree 'other'"):
        PathOram.open(store, "other", key=bytes(32), sealer=oram._states._sealer)  # type: ignore[attr-defined]


def test_counter_advances_with_commits(store_url: str, make_store: MakeStore) -> None:
    counter = MemoryCounter()
    oram = new_oram(make_store(store_url), counter=counter)
    for i in range(5):
        oram.write(i, block(i))
    assert counter.current() == oram.seq == 5


def test_counter_is_synced_at_checkpoints_and_written_after_every_commit(
    store_url: str, make_store: MakeStore
) -> None:
    counter = MemoryCounter()
    oram = new_oram(make_store(store_url), counter=counter, checkpoint_every=8)
    for i in range(21):
        oram.write(i, block(i))
    # What an OS crash could take back: the commits since the last checkpoint.
    assert (counter.current(), counter.durable) == (21, 16)


def test_a_delta_carries_only_the_batchs_stash_data(store_url: str, make_store: MakeStore) -> None:
    store = make_store(store_url, TracingStore)
    oram = new_oram(store, blocks=256, block_size=256, batch_size=2, checkpoint_every=1000, slots=2)
    rnd = random.Random(3)
    for i in range(200):
        oram.access_batch([Write(rnd.randrange(256), block(i, 256)), Read(rnd.randrange(256))])
    sizes = {len(r.blob) for r in store.trace.states}
    assert len(sizes) == 1  # one size, whatever the stash holds
    # ids of the whole stash (4 B each), data of at most batch_size blocks
    assert sizes.pop() < 2 * (256 + 4) + 100 * 4 + 2 * 8 + 200
    assert oram.stats.stash_peak > 0  # the stash was really carried by deltas
    again = reopen(oram)
    assert again.stash_blocks() == oram.stash_blocks()
    for b in oram.stash_blocks():
        assert again.read(b) == oram.read(b)


def test_geometry_is_half_full_with_four_slots() -> None:
    p = OramParams("t", blocks=1 << 16)
    assert (p.height, p.leaves, p.buckets) == (14, 1 << 14, (1 << 15) - 1)
    for n in (2, 3, 40, 100, 1000, 4097, 1 << 20):
        q = OramParams("t", blocks=n)
        assert n <= q.slots * q.leaves  # about half the slots of the tree at most
        assert q.leaves == 2 or q.slots * q.leaves // 2 < n


def test_a_tree_of_another_format_is_refused(store_url: str, make_store: MakeStore) -> None:
    oram = new_oram(make_store(store_url))
    sealer = oram._states._sealer  # type: ignore[attr-defined]
    # What a format-1 tree's metadata looks like: no "format" field, sealed as such.
    old = seal_meta(dataclasses.replace(oram.params, format=1), sealer)
    assert b'"format"' not in old
    mt = oram.store.meta_table  # type: ignore[attr-defined]
    with oram.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(mt.update().values(meta=old))
    with pytest.raises(ConfigError, match=r"storage format 1 .* opens format 2 only"):
        reopen(oram)
    with pytest.raises(ConfigError, match="storage format 1"):
        PathOram.create(
            make_store(store_url),
            OramParams("u", blocks=64, format=1),
            key=bytes(32),
            sealer=sealer,
        )


@pytest.mark.parametrize("bad", [{"blocks": 1}, {"block_size": 8}, {"batch_size": 0}])
def test_bad_parameters_are_config_errors(bad: dict[str, int]) -> None:
    fields = {"blocks": 64, "block_size": 64, "batch_size": 1} | bad
    with pytest.raises(ConfigError):
        OramParams("t", **fields)
    with pytest.raises(ConfigError, match="tree id"):
        OramParams("Bad-Id", blocks=64)


def test_a_second_writer_is_fenced_off(store_url: str, make_store: MakeStore) -> None:
    first = new_oram(make_store(store_url), seed=None)
    second = reopen(first)
    first.write(1, block(1))
    with pytest.raises(FencingError, match="at commit 1 in storage but this writer is at 0"):
        second.write(1, block(2))
    assert reopen(first).read(1) == block(1)


def test_next_path_of_a_block_is_independent_of_its_last(
    sqlite_url: str, make_store: MakeStore
) -> None:
    """The storage watching one block accessed again and again sees unrelated paths,
    whether the accesses are reads or writes (a leak of remapping would show here)."""
    from scipy.stats import chi2_contingency

    store = make_store(sqlite_url, TracingStore)
    oram = new_oram(store, blocks=32, block_size=16, cache_levels=0, seed=11)
    store.trace.reads.clear()
    for i in range(2400):
        oram.write(0, bytes(16)) if i % 2 else oram.read(0)
    base = 1 << oram.params.height
    leaves = [max(r) - base for r in store.trace.reads]
    table = [[0] * 4 for _ in range(4)]
    for prev, nxt in itertools.pairwise(leaves):
        table[prev % 4][nxt % 4] += 1
    assert chi2_contingency(table).pvalue > 0.01
    by_kind = [[0] * 4 for _ in range(2)]
    for i, leaf in enumerate(leaves):
        by_kind[i % 2][leaf % 4] += 1  # reads vs writes
    assert chi2_contingency(by_kind).pvalue > 0.01
