"""The journal's sealed head and counter, case by case, on a real SQLite file.

Node-level versions (a journal truncated or rolled back under `otrace serve`)
are in `test_tampering.py`; these pin down each check's message and the crash
window between the commit and the counter.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from collector._journal import Journal
from otrace.errors import IntegrityError, RollbackError
from tests.oram.helpers import MemoryCounter

KEY = bytes(range(32))


def _journal(tmp_path: Path, counter: MemoryCounter | None) -> Journal:
    return Journal.sqlite(str(tmp_path / "j.sqlite"), KEY, counter=counter)


def _sql(tmp_path: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(tmp_path / "j.sqlite") as conn:
        conn.execute(statement, args)
    conn.close()


def test_appends_advance_the_head_and_the_counter(tmp_path: Path) -> None:
    counter = MemoryCounter()
    journal = _journal(tmp_path, counter)
    assert journal.append([b"a", b"b"]) == [1, 2]
    assert counter.value == 2
    journal.truncate(2)  # drained: no entries left, the head stays
    journal.close()
    again = _journal(tmp_path, counter)
    again.resume_after(2)
    assert again.append([b"c"]) == [3]
    assert [s for s, _ in again.read_after(2, 10)] == [3]
    again.close()


def test_a_crash_between_commit_and_counter_is_accepted(tmp_path: Path) -> None:
    journal = _journal(tmp_path, MemoryCounter())
    journal.append([b"a", b"b", b"c"])
    journal.close()
    behind = MemoryCounter()
    behind.value = 2  # the counter write of entry 3 never happened
    again = _journal(tmp_path, behind)
    assert behind.value == 3
    again.resume_after(0)
    assert len(again.read_after(0, 10)) == 3
    again.close()


def test_newest_entries_deleted_are_refused_at_resume_and_at_drain(tmp_path: Path) -> None:
    counter = MemoryCounter()
    journal = _journal(tmp_path, counter)
    journal.append([b"a", b"b", b"c", b"d"])
    _sql(tmp_path, "DELETE FROM ingest_journal WHERE seq >= 3")
    with pytest.raises(IntegrityError, match=r"entries 3\.\.4 are missing"):
        journal.read_after(0, 10)
    assert len(journal.read_after(0, 2)) == 2  # what a smaller epoch asks for is all there
    journal.close()
    with pytest.raises(IntegrityError, match="2 of 4 are missing"):
        _journal(tmp_path, counter).resume_after(0)


def test_a_byte_limit_takes_the_leading_entries_that_fit_and_at_least_one(
    tmp_path: Path,
) -> None:
    journal = _journal(tmp_path, MemoryCounter())
    journal.append([b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 500])
    assert [s for s, _ in journal.read_after(0, 10, 200)] == [1, 2]  # 300 would pass it
    assert [s for s, _ in journal.read_after(0, 2, 10_000)] == [1, 2]  # the count still rules
    assert [s for s, _ in journal.read_after(3, 10, 200)] == [4]  # too big alone: taken
    # Entries missing past the limit are found once a read reaches them.
    _sql(tmp_path, "DELETE FROM ingest_journal WHERE seq = 4")
    assert [s for s, _ in journal.read_after(0, 10, 250)] == [1, 2]
    with pytest.raises(IntegrityError, match=r"entries 4\.\.4 are missing"):
        journal.read_after(0, 10, 300)  # all that is left fits: the head names one more
    journal.close()


def test_entries_past_the_byte_limit_are_not_opened(tmp_path: Path) -> None:
    journal = _journal(tmp_path, MemoryCounter())
    journal.append([b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 100])
    _sql(tmp_path, "UPDATE ingest_journal SET blob = zeroblob(length(blob)) WHERE seq = 4")
    # Entry 3 is opened (its length passes the limit), entry 4 never is.
    assert [s for s, _ in journal.read_after(0, 10, 200)] == [1, 2]
    with pytest.raises(IntegrityError, match="entry 4 failed authentication"):
        journal.read_after(0, 10, 300)
    _sql(tmp_path, "DELETE FROM ingest_journal WHERE seq = 2")  # a gap inside the limit
    with pytest.raises(IntegrityError, match="entry 2 is missing from storage"):
        journal.read_after(0, 10, 200)
    journal.close()


def test_an_older_head_put_back_is_a_rollback(tmp_path: Path) -> None:
    counter = MemoryCounter()
    journal = _journal(tmp_path, counter)
    journal.append([b"a"])
    with sqlite3.connect(tmp_path / "j.sqlite") as conn:
        (old_head,) = conn.execute("SELECT blob FROM ingest_journal_head").fetchone()
    conn.close()
    journal.append([b"b", b"c"])
    _sql(tmp_path, "DELETE FROM ingest_journal WHERE seq > 1")
    _sql(tmp_path, "UPDATE ingest_journal_head SET blob = ?", old_head)
    with pytest.raises(RollbackError, match="head in storage is at entry 1, but 3"):
        journal.read_after(0, 10)  # while running: the counter and memory are ahead
    journal.close()
    with pytest.raises(RollbackError, match="head is at entry 1 but the monotonic counter says 3"):
        _journal(tmp_path, counter)


def test_the_whole_journal_file_rolled_back(tmp_path: Path) -> None:
    counter = MemoryCounter()
    journal = _journal(tmp_path, counter)
    journal.append([b"a"])
    journal.close()
    shutil.copy(tmp_path / "j.sqlite", tmp_path / "then.sqlite")
    journal = _journal(tmp_path, counter)
    journal.append([b"b"])
    journal.close()
    shutil.copy(tmp_path / "then.sqlite", tmp_path / "j.sqlite")
    with pytest.raises(RollbackError, match="restored to an older copy"):
        _journal(tmp_path, counter)


def test_a_tampered_or_missing_head_is_refused(tmp_path: Path) -> None:
    journal = _journal(tmp_path, None)
    journal.append([b"a"])
    journal.close()
    with sqlite3.connect(tmp_path / "j.sqlite") as conn:
        (blob,) = conn.execute("SELECT blob FROM ingest_journal_head").fetchone()
        conn.execute(
            "UPDATE ingest_journal_head SET blob = ?", (blob[:-1] + bytes([blob[-1] ^ 1]),)
        )
    conn.close()
    with pytest.raises(IntegrityError, match="sealed head failed authentication"):
        _journal(tmp_path, None)
    _sql(tmp_path, "DELETE FROM ingest_journal_head")
    with pytest.raises(IntegrityError, match="holds entries but no sealed head"):
        _journal(tmp_path, None)


def test_a_journal_behind_the_oram_watermark_is_a_rollback(tmp_path: Path) -> None:
    """Without a counter (tests, or a lost platform directory) the ORAM still vouches."""
    journal = _journal(tmp_path, None)
    journal.append([b"a", b"b"])
    journal.truncate(2)
    with pytest.raises(RollbackError, match="ORAM already holds entries up to 5"):
        journal.resume_after(5)
    journal.close()


def test_a_drained_journal_from_before_heads_is_adopted_once(tmp_path: Path) -> None:
    """Upgrade: an empty journal without a head (counter 0) takes the ORAM's watermark,
    and from then on the head and the counter guard it."""
    counter = MemoryCounter()
    journal = _journal(tmp_path, counter)
    journal.resume_after(7)
    assert journal.append([b"x"]) == [8] and counter.value == 8
    journal.close()
    again = _journal(tmp_path, counter)
    again.resume_after(7)
    again.close()
    (tmp_path / "j.sqlite").unlink()
    with pytest.raises(RollbackError, match="counter says 8"):
        _journal(tmp_path, counter)


def test_appends_racing_a_drain_are_not_mistaken_for_a_rollback(tmp_path: Path) -> None:
    """A drain reads the stored head while appends commit: only what was appended before
    its read is owed (regression: the overload test once latched a false rollback)."""
    import threading

    journal = _journal(tmp_path, MemoryCounter())
    stop = threading.Event()
    errors: list[BaseException] = []

    def append() -> None:
        while not stop.is_set():
            journal.append([b"x"] * 4)

    def drain() -> None:
        watermark = 0
        try:
            while not stop.is_set():
                got = journal.read_after(watermark, 64)
                if got:
                    watermark = got[-1][0]
                    journal.truncate(watermark)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    threading.Event().wait(2.0)
    stop.set()
    for t in threads:
        t.join()
    journal.close()
    assert not errors, errors
