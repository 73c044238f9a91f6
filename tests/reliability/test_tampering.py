"""The storage tampers with a node's real files: each change is refused, never answered.

One place for every attack the issue lists, run against the files `otrace serve`
writes (data directory: `otrace.sqlite`, `journal.sqlite`; platform directory:
monotonic counters). The outcome is either the node refusing to start with a
clear `IntegrityError` / `RollbackError`, or the query API answering that error;
never an answer that differs from what was acknowledged. The ORAM-level twins
of these attacks, with exact messages per case, are in `tests/oram/test_tamper.py`;
the EDB codec's in `tests/query/test_edb.py`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector import Node
from otrace.errors import IntegrityError, OTraceError, RollbackError
from otrace.loadtest._verify import check_trace
from otrace.settings import Settings
from tests.reliability.conftest import (
    copy_tree,
    expected_of,
    known_traces,
    node_settings,
    query_client,
    running,
    send_known,
)

Tamper = Callable[[sqlite3.Connection], None]


@pytest.fixture(scope="module")
def golden(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[ExportTraceServiceRequest]]:
    """A stopped node's directory holding six acknowledged, drained traces."""
    root = tmp_path_factory.mktemp("golden")
    reqs = known_traces(6)
    with running(node_settings(root)) as node:
        send_known(node, reqs)
        node.flush()
    return root, reqs


def _copy(golden: tuple[Path, list[ExportTraceServiceRequest]], tmp_path: Path) -> Settings:
    copy_tree(golden[0] / "data", tmp_path / "data")
    copy_tree(golden[0] / "platform", tmp_path / "platform")
    return node_settings(tmp_path)


def _no_wrong_answer(
    settings: Settings, reqs: list[ExportTraceServiceRequest], error: type[OTraceError]
) -> str:
    """Starts the node and asks for every trace; each answer is either exact or `error`.
    Returns how the attack was caught ("start" or "query"); fails if it was not."""
    node = Node(settings)
    try:
        node.start()
    except error as exc:
        node.stop()
        return f"start: {exc}"
    refused = []
    try:
        with query_client(node) as client:
            for req in reqs:
                expected = expected_of(req)
                try:
                    stored = client.get_trace(expected.trace_id)
                except error as exc:
                    refused.append(str(exc))
                    continue
                check = check_trace(expected, stored)
                assert check.intact, f"a wrong answer after tampering: {check}"
    finally:
        node.stop()
    assert refused, "tampering went unnoticed: every trace was answered"
    return f"query: {refused[0]}"


def _edit(db: Path, tamper: Tamper) -> None:
    with sqlite3.connect(db) as conn:
        tamper(conn)
    conn.close()


def _leaves(conn: sqlite3.Connection) -> list[int]:
    """Bucket indexes of the deepest level: every path read touches one of them."""
    (top,) = conn.execute("SELECT max(idx) FROM oram_spans").fetchone()
    first = 1 << (top.bit_length() - 1)
    return list(range(first, top + 1))


def _flip_leaves(conn: sqlite3.Connection) -> None:
    for idx in _leaves(conn):
        (blob,) = conn.execute("SELECT blob FROM oram_spans WHERE idx = ?", (idx,)).fetchone()
        flipped = bytearray(blob)
        flipped[len(flipped) // 2] ^= 0x01
        conn.execute("UPDATE oram_spans SET blob = ? WHERE idx = ?", (bytes(flipped), idx))


def _swap_leaves(conn: sqlite3.Connection) -> None:
    rows = dict(conn.execute("SELECT idx, blob FROM oram_spans"))
    for idx in _leaves(conn)[::2]:
        conn.execute("UPDATE oram_spans SET blob = ? WHERE idx = ?", (rows[idx + 1], idx))
        conn.execute("UPDATE oram_spans SET blob = ? WHERE idx = ?", (rows[idx], idx + 1))


def _alter_edb_values(conn: sqlite3.Connection) -> None:
    for slot, value in conn.execute("SELECT slot, value FROM edb_spans").fetchall():
        changed = bytearray(value)
        changed[-1] ^= 0x80
        conn.execute("UPDATE edb_spans SET value = ? WHERE slot = ?", (bytes(changed), slot))


def _move_edb_rows(conn: sqlite3.Connection) -> None:
    """Every row's value under another row's slot (a rotation: all slots still exist); a
    lone row moves to the next bucket's slot (its own slot is then missing)."""
    rows = conn.execute("SELECT slot, value FROM edb_spans ORDER BY slot").fetchall()
    if len(rows) == 1:
        conn.execute("UPDATE edb_spans SET slot = slot + 1")
        return
    values = [v for _, v in rows]
    for (slot, _), value in zip(rows, values[1:] + values[:1], strict=True):
        conn.execute("UPDATE edb_spans SET value = ? WHERE slot = ?", (value, slot))


def _move_edb_segment(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE edb_spans SET segment = segment + 1")


@pytest.mark.parametrize(
    "tamper",
    [_flip_leaves, _swap_leaves, _alter_edb_values, _move_edb_rows, _move_edb_segment],
    ids=["bit-flip-bucket", "swap-buckets", "alter-edb-row", "move-edb-row", "edb-row-to-segment"],
)
def test_tampered_store_is_refused_never_answered(
    golden: tuple[Path, list[ExportTraceServiceRequest]], tmp_path: Path, tamper: Tamper
) -> None:
    settings = _copy(golden, tmp_path)
    _edit(settings.data_dir / "otrace.sqlite", tamper)
    how = _no_wrong_answer(settings, golden[1], IntegrityError)
    words = ("authentication", "digest", "another segment", "missing from storage")
    assert any(word in how for word in words), how


def test_old_buckets_put_back_are_refused(
    golden: tuple[Path, list[ExportTraceServiceRequest]], tmp_path: Path
) -> None:
    """Every bucket a later ingest rewrote gets its older ciphertext back (the sealed ORAM
    state stays new). The root is always among them, so the node refuses at start; one
    stale bucket at a time, found at the next path read, is `tests/oram/test_tamper.py`."""
    settings = _copy(golden, tmp_path)
    db = settings.data_dir / "otrace.sqlite"
    with sqlite3.connect(db) as conn:
        old = dict(conn.execute("SELECT idx, blob FROM oram_spans"))
    conn.close()
    more = known_traces(4, service="later")
    with running(settings) as node:
        send_known(node, more)
        node.flush()
    with sqlite3.connect(db) as conn:
        changed = [
            idx
            for idx, blob in conn.execute("SELECT idx, blob FROM oram_spans")
            if blob != old[idx]
        ]
        for idx in changed:
            conn.execute("UPDATE oram_spans SET blob = ? WHERE idx = ?", (old[idx], idx))
    conn.close()
    assert 1 in changed, "the later ingest did not rewrite the root"
    how = _no_wrong_answer(settings, golden[1] + more, IntegrityError)
    assert how.startswith("start"), how


# ----------------------------------------------------------------- journal


def _undrained(
    tmp_path: Path, batches: int = 2
) -> tuple[Settings, list[list[ExportTraceServiceRequest]]]:
    """A stopped node whose journal holds acknowledged, not yet drained requests."""
    settings = node_settings(tmp_path, epoch_ms=600_000)
    sent = []
    for b in range(batches):
        with running(settings) as node:
            reqs = known_traces(3, service=f"batch{b}")
            send_known(node, reqs)
            assert node.stats()["journal_depth"] == 3 * (b + 1)
        sent.append(reqs)
        if b == 0:
            copy_tree(settings.data_dir, tmp_path / "journal-then")
    return settings, sent


def _journal(settings: Settings) -> Path:
    return settings.data_dir / "journal.sqlite"


def test_newest_journal_entries_deleted_while_stopped(tmp_path: Path) -> None:
    settings, _ = _undrained(tmp_path)
    with sqlite3.connect(_journal(settings)) as conn:
        conn.execute("DELETE FROM ingest_journal WHERE seq = (SELECT max(seq) FROM ingest_journal)")
    conn.close()
    with pytest.raises(IntegrityError, match=r"1 of 6 are missing from storage"):
        Node(settings).start()


def test_journal_rolled_back_with_its_head_while_stopped(tmp_path: Path) -> None:
    settings, _ = _undrained(tmp_path)
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
        (settings.data_dir / name).unlink(missing_ok=True)
        old = tmp_path / "journal-then" / name
        if old.exists():
            (settings.data_dir / name).write_bytes(old.read_bytes())
    with pytest.raises(RollbackError, match="head is at entry 3 but the monotonic counter says 6"):
        Node(settings).start()


def test_journal_deleted_while_stopped(tmp_path: Path) -> None:
    settings, _ = _undrained(tmp_path, batches=1)
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
        (settings.data_dir / name).unlink(missing_ok=True)
    with pytest.raises(RollbackError, match="no sealed head, but the monotonic counter says 3"):
        Node(settings).start()


def test_journal_truncated_under_a_running_node(tmp_path: Path) -> None:
    """Entries deleted between the acknowledgement and the epoch: the epoch stops, ingest
    and queries refuse, and a restart refuses too."""
    settings = node_settings(tmp_path, epoch_ms=600_000)
    first, second = known_traces(3, service="drained"), known_traces(3, service="cut")
    with running(settings) as node:
        send_known(node, first)
        node.flush()
        send_known(node, second)
        with sqlite3.connect(_journal(settings)) as conn:
            conn.execute("DELETE FROM ingest_journal WHERE seq > 4")
        conn.close()
        with pytest.raises(IntegrityError, match=r"entries 5\.\.6 are missing"):
            node.flush()
        with query_client(node) as client:
            with pytest.raises(IntegrityError, match="ingest stopped"):
                client.get_trace(expected_of(first[0]).trace_id)
        assert "ingest stopped" in str(node.stats()["last_error"]) or node.stats()["spans"] == 9
    with pytest.raises(IntegrityError, match="missing from storage"):
        Node(settings).start()


# ------------------------------------------------------- whole-state rollback


def test_whole_data_dir_restored_to_an_older_copy(tmp_path: Path) -> None:
    """Database and journal together put back: the platform's counters are ahead."""
    settings = node_settings(tmp_path)
    with running(settings) as node:
        send_known(node, known_traces(2))
        node.flush()
    copy_tree(settings.data_dir, tmp_path / "then")
    with running(settings) as node:
        send_known(node, known_traces(2, service="later"))
        node.flush()
    copy_tree(tmp_path / "then", settings.data_dir)
    with pytest.raises(RollbackError, match="restored to an older copy"):
        Node(settings).start()
