"""One ingest journal, several appending processes (replicas): sequence numbers allocated in
the insert's transaction, contiguous, in commit order, and still surviving truncation."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from collector._journal import Journal
from otrace.errors import IntegrityError, RollbackError

KEY = b"\x07" * 32


@pytest.fixture
def journals(store_url: str) -> Iterator[list[Journal]]:
    # Separate engines stand for separate replica processes on one database.
    opened = [Journal(sa.create_engine(store_url), KEY) for _ in range(3)]
    yield opened
    for journal in opened:
        journal.close()


def test_concurrent_writers_get_contiguous_unique_seqs(journals: list[Journal]) -> None:
    got: list[list[int]] = []
    lock = threading.Lock()

    def writer(journal: Journal, who: int) -> None:
        for i in range(15):
            seqs = journal.append([f"{who}-{i}-{k}".encode() for k in range(1 + i % 3)])
            with lock:
                got.append(seqs)

    threads = [threading.Thread(target=writer, args=(j, n)) for n, j in enumerate(journals)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(s for seqs in got for s in seqs)
    assert every == list(range(1, len(every) + 1))  # no collision, no gap
    assert all(seqs == list(range(seqs[0], seqs[-1] + 1)) for seqs in got)  # one run per append
    entries = journals[0].read_after(0, 10_000)
    assert [seq for seq, _ in entries] == every
    assert journals[1].pending() == len(every)


def test_numbering_continues_after_the_journal_was_emptied(journals: list[Journal]) -> None:
    one, two, _ = journals
    assert one.append([b"a", b"b"]) == [1, 2]
    one.truncate(2)
    assert one.pending() == 0
    assert two.append([b"c"]) == [3]  # not 1: a drained entry's number is never reused
    assert [seq for seq, _ in one.read_after(2, 10)] == [3]
    assert one.append([b"d"]) == [4]
    # An ORAM watermark ahead of the sealed head means the journal was rolled back.
    with pytest.raises(RollbackError, match="journal was rolled back or replaced"):
        two.resume_after(10)


def test_a_hole_in_the_middle_is_still_an_integrity_error(
    journals: list[Journal], store_url: str
) -> None:
    one, two, _ = journals
    one.append([b"a"])
    two.append([b"b"])
    one.append([b"c"])
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ingest_journal WHERE seq = 2"))
    engine.dispose()
    with pytest.raises(IntegrityError, match="entry 2 is missing"):
        two.read_after(0, 10)


def test_an_aborted_append_leaves_no_gap(journals: list[Journal], store_url: str) -> None:
    one, two, _ = journals
    one.append([b"a"])
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:  # a row that makes the next insert fail mid-transaction
        conn.execute(sa.text("INSERT INTO ingest_journal (seq, blob) VALUES (3, :b)"), {"b": b"x"})
    with pytest.raises(Exception, match="refused a write"):
        two.append([b"b", b"c"])  # would take 2..3: rolled back, allocation included
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ingest_journal WHERE seq = 3"))
    engine.dispose()
    assert two.append([b"b"]) == [2]
    assert [body for _, body in one.read_after(0, 10)] == [b"a", b"b"]


def test_a_replica_resuming_late_never_rewinds_the_numbering(journals: list[Journal]) -> None:
    """A replica that opened the journal before the others appended takes over (its view of
    the head is stale): it must read the stored head, not hand out used numbers again.
    (Found by the failover test: the new leader rewound the head and lost spans.)"""
    one, two, late = journals
    assert one.append([b"a", b"b", b"c"]) == [1, 2, 3]
    late.resume_after(2)  # the ORAM holds 1..2; entry 3 waits to be drained
    assert two.append([b"d"]) == [4]
    assert [seq for seq, _ in late.read_after(2, 10)] == [3, 4]
