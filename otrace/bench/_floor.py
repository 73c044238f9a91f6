"""The storage floor: otrace's bucket-row reads and writes with no crypto and no ORAM."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

from oram_store import BucketCodec, OramParams, SqlBucketStore, StateRecord, path_nodes
from otrace.bench._support import ProgressCallback, Ticker

__all__ = ["FloorPattern", "load_floor"]

_BLOB_POOL = 64  # distinct random blobs the floor cycles through


def load_floor(
    store: SqlBucketStore,
    params: OramParams,
    cache_levels: int,
    rng: random.Random,
    progress: ProgressCallback | None,
) -> tuple[FloorPattern, float]:
    """Loads the floor's table (otrace's row count and blob size); returns it and the load time."""
    blob_size = BucketCodec(params, bytes(32)).blob_size
    pool = [rng.randbytes(blob_size) for _ in range(_BLOB_POOL)]
    start = time.perf_counter()
    _load_floor_table(store, params, pool, progress)
    load_s = time.perf_counter() - start
    return FloorPattern(store, params, cache_levels, pool, rng), load_s


class FloorPattern:
    """The storage work of otrace's accesses with no crypto and no ORAM logic.

    Same store class, pragmas, row count and blob size as otrace's trees. Per
    transaction: one SELECT ... IN of the uncached buckets (level >= C) of
    random paths, then one UPDATE per bucket of those paths with random blobs,
    and one durable commit. The single-access pattern uses one path per access;
    the batched pattern the union of K paths per K accesses, as `access_batch`
    does.
    """

    def __init__(
        self,
        store: SqlBucketStore,
        params: OramParams,
        cache_levels: int,
        pool: list[bytes],
        rng: random.Random,
    ) -> None:
        self.store = store
        self._params, self._pool, self._rng = params, pool, rng
        self._first_uncached = 1 << min(cache_levels, params.height + 1)
        self._version = 0

    def time(self, accesses: int, paths: int) -> float:
        """Seconds for `accesses` logical accesses, `paths` random paths per transaction."""
        done = 0
        start = time.perf_counter()
        while done < accesses:
            self._transaction(paths)
            done += paths
        return time.perf_counter() - start

    def _transaction(self, paths: int) -> None:
        p, pool = self._params, self._pool
        self._version += 1
        leaves = [self._rng.randrange(p.leaves) for _ in range(paths)]
        ordered = sorted(path_nodes(p.height, leaves))
        rows = [(n, self._version, pool[(self._version + n) % _BLOB_POOL]) for n in ordered]
        with self.store.transaction(p.tree_id) as txn:
            txn.read_buckets([n for n in ordered if n >= self._first_uncached])
            txn.write_buckets(rows)


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

