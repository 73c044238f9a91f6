"""SQLite WAL checkpoints on the store's own thread (`oram_store._checkpoint`)."""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from pathlib import Path

from oram_store import OramParams, PathOram, SqlBucketStore, Write
from oram_store._checkpoint import WRITER_PAGES
from tee import Sealer

from .helpers import KEY, STATE_KEY, MemoryCounter


def _tree(path: Path) -> tuple[SqlBucketStore, PathOram]:
    store = SqlBucketStore(f"sqlite:///{path}")
    oram = PathOram.create(
        store,
        OramParams("t", blocks=1024, block_size=4096, batch_size=8),
        key=KEY,
        sealer=Sealer.from_key(STATE_KEY),
        counter=MemoryCounter(),
        cache_levels=2,
    )
    return store, oram


def _digest(path: Path) -> bytes:
    """The database file's bytes (commits in WAL mode reach it only by a checkpoint)."""
    return hashlib.sha256(path.read_bytes()).digest()


def _wait(condition, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_commits_are_copied_into_the_database_file_by_the_stores_own_thread(
    tmp_path: Path,
) -> None:
    store, oram = _tree(tmp_path / "t.db")
    db = tmp_path / "t.db"
    try:
        checkpointer = store._checkpointer
        assert checkpointer is not None
        assert _wait(lambda: checkpointer.checkpoints > 0)  # the tree's creation, copied
        with checkpointer.paused():  # the thread held off: the commits stay in the log
            before = _digest(db)
            for i in range(4):  # well below the writer's own threshold of WRITER_PAGES
                oram.access_batch([Write(8 * i + j, bytes([i]) * 4096) for j in range(8)])
            time.sleep(0.6)  # past the thread's period
            assert _digest(db) == before
        # released, the thread copies them into the database file without another commit
        assert _wait(lambda: _digest(db) != before)
        assert checkpointer.last_error == ""
        assert oram.read(8 * 3) == bytes([3]) * 4096
    finally:
        store.close()


def test_the_writer_keeps_its_own_checkpoint_threshold(tmp_path: Path) -> None:
    store, _ = _tree(tmp_path / "t.db")
    try:
        with store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert pages == WRITER_PAGES
    finally:
        store.close()


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "otrace-wal-checkpoint"]


def test_close_ends_the_thread_and_a_dropped_store_does_not_leave_one(tmp_path: Path) -> None:
    gc.collect()
    running = len(_checkpoint_threads())
    store, _ = _tree(tmp_path / "a.db")
    assert len(_checkpoint_threads()) == running + 1
    store.close()
    assert len(_checkpoint_threads()) == running

    dropped, oram = _tree(tmp_path / "b.db")
    dropped.engine.dispose()
    del dropped, oram
    gc.collect()
    assert _wait(lambda: len(_checkpoint_threads()) == running)


def test_an_in_memory_store_has_no_checkpointer() -> None:
    store = SqlBucketStore("sqlite://")
    try:
        assert store._checkpointer is None
    finally:
        store.close()
