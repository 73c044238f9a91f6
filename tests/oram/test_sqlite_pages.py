"""A bucket row fits one SQLite page at the default block size (`DEFAULT_BLOCK_SIZE`).

Measured from the storage's side: the WAL frames one ORAM batch appends. A row that
spills into an overflow page costs two frames per bucket written, and the write loop
about half again as much time (`oram_store/_params.py`).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from oram_store import DEFAULT_BLOCK_SIZE, OramParams, PathOram, SqlBucketStore, Write
from oram_store._store import WRITER_CACHE_KIB
from tee import Sealer

from .helpers import KEY, STATE_KEY, MemoryCounter

_WAL_HEADER, _FRAME_HEADER = 32, 24


def _frames_per_bucket(path: Path, block_size: int) -> tuple[float, int, int]:
    """(WAL frames per bucket written by one batch, database pages, tree buckets)."""
    store = SqlBucketStore(f"sqlite:///{path}")
    try:
        params = OramParams("t", blocks=1024, block_size=block_size, batch_size=8)
        oram = PathOram.create(
            store,
            params,
            key=KEY,
            sealer=Sealer.from_key(STATE_KEY),
            counter=MemoryCounter(),
            cache_levels=2,
        )
        checkpointer = store._checkpointer
        assert checkpointer is not None
        wal = path.with_name(path.name + "-wal")
        with checkpointer.paused(), closing(sqlite3.connect(path, isolation_level=None)) as db:
            (page,) = db.execute("PRAGMA page_size").fetchone()
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            assert wal.stat().st_size == 0
            before = oram.stats.buckets_written
            oram.access_batch([Write(i, bytes([i]) * block_size) for i in range(8)])
            written = oram.stats.buckets_written - before
            frames = (wal.stat().st_size - _WAL_HEADER) / (page + _FRAME_HEADER)
            (pages,) = db.execute("PRAGMA page_count").fetchone()
        return frames / written, pages, params.buckets
    finally:
        store.close()


def test_a_default_bucket_row_is_one_page_and_a_larger_one_two(tmp_path: Path) -> None:
    fits, fits_pages, buckets = _frames_per_bucket(tmp_path / "a.db", DEFAULT_BLOCK_SIZE)
    # One frame per bucket written, plus a few a batch for the state record, the aux
    # row and b-tree interior pages.
    assert fits < 1.2
    # 4 * 4060 + 108 bytes of blob and its record header pass the 16,349 bytes a row
    # may keep in a 16 KiB page: each row spills into an overflow page. Leaf pages
    # then hold the first ~2 KB of several rows, which a batch sometimes shares.
    spills, spills_pages, _ = _frames_per_bucket(tmp_path / "b.db", 4060)
    assert spills > 1.5
    assert spills_pages > fits_pages + buckets // 10


def test_a_tree_transaction_gets_a_large_page_cache_and_gives_it_back(tmp_path: Path) -> None:
    # A group of ingest batches must not spill its pages into the log before its
    # commit; readers sharing the pool keep SQLite's default cache.
    store = SqlBucketStore(f"sqlite:///{tmp_path / 'store.sqlite'}")
    try:
        PathOram.create(
            store,
            OramParams("t", blocks=64, block_size=64),
            key=KEY,
            sealer=Sealer.from_key(STATE_KEY),
        )
        with store.transaction("t") as txn:
            raw = txn.connection.connection.driver_connection  # type: ignore[attr-defined]
            assert raw.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_KIB
        assert raw.execute("PRAGMA cache_size").fetchone()[0] == -2000  # back in the pool
    finally:
        store.close()
