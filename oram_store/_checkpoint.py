"""WAL checkpoints on a thread of their own, so the ORAM writer's commits copy little.

In WAL mode SQLite appends every committed page to the log, and the committing
connection copies the log back into the database file once it holds
`wal_autocheckpoint` pages, inside that commit. An ORAM batch rewrites ~320
buckets, a 16 KiB page each at the default block size (two at B=4096, when this
was measured), so that copy fell on the writer every other batch (a loop of
32-block write batches with no checkpoint at all ran at 1.24 against 1.84 ms a
block). `WalCheckpointer` runs PASSIVE checkpoints beside the
writer, woken after a commit of `WAKE_ROWS` bucket rows or more (an ingest
batch; smaller commits add up) and twice a second: PASSIVE neither waits for
nor blocks the writer or readers and copies only committed frames, so
durability is unchanged (commits still fsync the log; a checkpoint fsyncs the
database file before the log is reused).

The writer keeps its automatic checkpoint (`WRITER_PAGES`, SQLite's default),
which now finds most frames already copied: it copies the rest and lets the
next transaction restart the log, which a PASSIVE checkpoint alone never does
under a writer that begins its next batch at once (the log grew to 259 MiB
when the writer's own checkpoint was set 16x higher). Measured, 6,400 blocks
in 32-block write batches, alternating: 1.42-1.48 ms a block against
1.62-1.70 without the thread; the log peaks at 27 MiB either way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WAKE_ROWS", "WRITER_PAGES", "WalCheckpointer"]

WRITER_PAGES = 1000  # the writer's own checkpoint threshold (SQLite's default)
WAKE_ROWS = 128  # bucket rows (~2 MiB of log, a page each) that wake the thread at a commit
_PERIOD_S = 0.5


class WalCheckpointer:
    """Checkpoints the SQLite database at `path` beside its writer until `close`."""

    def __init__(self, path: str | Path) -> None:
        self._uri = f"{Path(path).resolve().as_uri()}?mode=rw"  # never creates a file
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._exclusive = threading.Lock()  # guards `_conn` and each checkpoint
        self._conn: sqlite3.Connection | None = None
        self._written = 0  # bucket rows written since the last wake (the writer's count)
        self.checkpoints = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name="otrace-wal-checkpoint", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"WalCheckpointer(checkpoints={self.checkpoints})"

    def written(self, rows: int) -> None:
        """The writer's transaction wrote `rows` bucket rows (called before its commit)."""
        self._written += rows

    def committed(self) -> None:
        """The writer committed: checkpoint now if it wrote much since the last wake (an
        ingest batch of 32 blocks writes ~320 rows), else at the next period. Small
        commits then share a checkpoint and its fsync of the database file."""
        if self._written >= WAKE_ROWS:
            self._written = 0
            self._wake.set()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No checkpoint and no connection of this thread while the block runs: changing
        the journal mode needs the database's only connection."""
        with self._exclusive:
            self._disconnect()
            yield

    def stop(self) -> None:
        """Ends the thread after its checkpoint in progress, without waiting for it."""
        self._stopped.set()
        self._wake.set()

    def close(self) -> None:
        self.stop()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self._wake.wait(_PERIOD_S)
                self._wake.clear()
                if self._stopped.is_set():
                    return
                with self._exclusive:
                    self._checkpoint()
        finally:
            with self._exclusive:
                self._disconnect()

    def _checkpoint(self) -> None:
        if self._conn is None:
            try:
                self._conn = sqlite3.connect(
                    self._uri, uri=True, timeout=10, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error:  # the database file is gone: nothing left to checkpoint
                self._stopped.set()
                return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            self.last_error = ""
        except sqlite3.Error as exc:  # busy with another checkpoint, say: the next wake retries
            self.last_error = str(exc)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
