"""Batches grouped into one transaction (`grouped`): same rows, one commit, all or nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import event

from oram_store import (
    DirectBlockStore,
    OramParams,
    PathOram,
    Read,
    SqlBucketStore,
    TreeTransaction,
    Write,
)
from otrace.errors import StashOverflow, StorageError
from tee import Sealer
from tests.oram.helpers import KEY, STATE_KEY, MemoryCounter, TracingStore, block, new_oram, reopen

MakeStore = Callable[..., SqlBucketStore]


def _commits(store: SqlBucketStore) -> list[int]:
    """Counts the transactions the database commits from now on."""
    count = [0]
    event.listen(store.engine, "commit", lambda _conn: count.__setitem__(0, count[0] + 1))
    return count


def _work(oram: PathOram, rounds: int) -> list[list[bytes | None]]:
    return [
        oram.access_batch([Write((5 * i) % 64, block(i)), Read((3 * i) % 64), Read(i % 64)])
        for i in range(rounds)
    ]


def test_a_group_writes_the_same_rows_as_its_batches_alone_in_one_commit(
    store_url: str, make_store: MakeStore
) -> None:
    store = make_store(store_url, TracingStore)
    alone = new_oram(store, batch_size=4, checkpoint_every=4, tree_id="a")
    grouped = new_oram(store, batch_size=4, checkpoint_every=4, tree_id="g")

    def observed() -> tuple[list[list[tuple[int, int, int]]], list[tuple[int, int, int]]]:
        # Bucket rows without their bytes (the tree id is in each blob's associated
        # data), and state records; cleared for the next run.
        rows = [[(i, v, len(b)) for i, v, b in batch] for batch in store.trace.writes]
        states = [(r.seq, r.kind, len(r.blob)) for r in store.trace.states]
        store.trace.writes.clear()
        store.trace.states.clear()
        return rows, states

    observed()
    expected = _work(alone, 10)
    seen_alone = observed()
    commits = _commits(store)
    with grouped.grouped():
        assert _work(grouped, 10) == expected  # later batches see earlier ones
    assert commits[0] == 1
    # The storage sees the same bucket rows (same seeded leaves) and the same state
    # records, checkpoints included; only the commit instants differ.
    assert observed() == seen_alone
    assert grouped.seq == alone.seq == 10
    again = reopen(grouped)
    assert [again.read(b) for b in range(64)] == [alone.read(b) for b in range(64)]
    assert again.audit().blocks_in_tree + len(again.stash_blocks()) == 10


def test_a_failed_group_changes_nothing_in_storage_or_in_memory(
    store_url: str, make_store: MakeStore
) -> None:
    counter = MemoryCounter()
    oram = new_oram(make_store(store_url), batch_size=4, checkpoint_every=4, counter=counter)
    _work(oram, 4)
    committed = {b: oram.read(b) for b in range(64)}  # commit 5: the next ones are deltas
    seq = oram.seq
    leaves = [oram.leaf_of(b) for b in range(64)]
    stats = (oram.stats.batches, oram.stats.buckets_written)
    with pytest.raises(RuntimeError, match="caller gave up"), oram.grouped():
        _work(oram, 6)  # changes the committed position map in place, then a checkpoint
        assert oram.read(5) == block(1)  # seen inside the group
        raise RuntimeError("caller gave up")
    assert oram.seq == seq and counter.value == seq
    assert [oram.leaf_of(b) for b in range(64)] == leaves
    assert (oram.stats.batches, oram.stats.buckets_written) == stats
    assert reopen(oram).seq == seq
    # The tree goes on from the committed state, and a reopen agrees with it.
    assert {b: oram.read(b) for b in range(64)} == committed
    assert oram.audit().blocks_in_tree + len(oram.stash_blocks()) == 4
    assert {b: reopen(oram).read(b) for b in range(64)} == committed


def test_a_batch_that_failed_inside_a_group_rolls_the_group_back_even_if_caught(
    store_url: str, make_store: MakeStore
) -> None:
    oram = new_oram(make_store(store_url), batch_size=2)
    oram.write(1, block(1))

    def refuse(_txn: TreeTransaction, _seq: int) -> None:
        raise StashOverflow("injected")

    with pytest.raises(StorageError, match=r"a batch of the group failed \(injected\)"):
        with oram.grouped():
            oram.write(2, block(2))
            with pytest.raises(StashOverflow):
                oram.access_batch([Write(3, block(3))], in_transaction=refuse)
            with pytest.raises(StorageError, match="an earlier batch of this group failed"):
                oram.write(4, block(4))
            # The caller went on regardless: the group still must not commit.
    assert oram.seq == 1
    assert [oram.read(b) for b in (1, 2, 3, 4)] == [block(1), bytes(64), bytes(64), bytes(64)]


class RecordingCounter(MemoryCounter):
    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[int, bool]] = []

    def advance(self, value: int, *, durable: bool = True) -> None:
        self.moves.append((value, durable))
        super().advance(value, durable=durable)


def test_the_counter_moves_once_per_group_and_syncs_if_it_held_a_checkpoint(
    sqlite_url: str, make_store: MakeStore
) -> None:
    counter = RecordingCounter()
    oram = new_oram(make_store(sqlite_url), batch_size=2, checkpoint_every=4, counter=counter)
    moves = counter.moves
    moves.clear()  # creation's
    with oram.grouped():
        oram.write(1, block(1))
        oram.write(2, block(2))
        with oram.grouped():  # joins the outer group
            oram.write(3, block(3))
        assert moves == []
    with oram.grouped():
        oram.write(4, block(4))
        oram.write(5, block(5))
    assert moves == [(3, False), (5, True)]  # commit 4 is a checkpoint
    assert (counter.value, counter.durable) == (5, 5)


def test_direct_blocks_group_too(store_url: str, make_store: MakeStore) -> None:
    store = make_store(store_url)
    params = OramParams("d", blocks=32, block_size=64)
    direct = DirectBlockStore.create(store, params, key=KEY, sealer=Sealer.from_key(STATE_KEY))
    commits = _commits(store)
    with direct.grouped():
        direct.access_batch([Write(1, block(1))])
        assert direct.access_batch([Read(1)]) == [block(1)]
    assert commits[0] == 1 and direct.seq == 2
    with pytest.raises(RuntimeError), direct.grouped():
        direct.access_batch([Write(1, block(9)), Write(2, block(2))])
        raise RuntimeError
    assert direct.seq == 2
    assert direct.access_batch([Read(1), Read(2)]) == [block(1), bytes(64)]
    again = DirectBlockStore.open(store, "d", key=KEY, sealer=Sealer.from_key(STATE_KEY))
    assert again.seq == 3
