"""Several batches in one storage transaction: one durable commit instead of many.

Every batch of a block device (`PathOram`, `DirectBlockStore`) is a durable
commit, an fsync of the SQLite log (~10 ms on a busy disk) or a PostgreSQL
commit. An ingest epoch writes several batches in a row; `grouped()` lets them
share one transaction. Each batch still reads, writes and seals exactly what it
would alone, so the storage sees the same rows and records (and fewer commit
instants); the in-memory state moves on batch by batch, so later batches see
earlier ones, and is put back if anything in the group fails or the commit
does: nothing in memory or in storage changes unless the whole group commits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from oram_store._params import OramParams
from oram_store._state import FreshnessCounter
from oram_store._store import BucketStore, TreeTransaction
from otrace.errors import StorageError

__all__ = ["Grouped", "advance_counter"]

Snapshot = TypeVar("Snapshot")


@dataclass(slots=True)
class _Group(Generic[Snapshot]):
    snapshot: Snapshot  # what `_restore` puts back if the group does not commit
    txn: TreeTransaction | None = None
    failed: BaseException | None = None  # a batch that raised: the group must not commit


def advance_counter(
    counter: FreshnessCounter | None, params: OramParams, before: int, after: int
) -> None:
    """Advances the freshness counter past commits `before+1..after`, just committed.

    The commit is durable; the counter only has to trail it. Syncing it only when a
    checkpoint is among them bounds what an OS crash can take back (SECURITY.md)."""
    if counter is None or after <= before:
        return
    durable = any(params.is_checkpoint(seq) for seq in range(before + 1, after + 1))
    counter.advance(after, durable=durable)


class Grouped(ABC, Generic[Snapshot]):
    """A block device whose batches can share one transaction (`grouped`)."""

    store: BucketStore
    params: OramParams
    _counter: FreshnessCounter | None
    _group: _Group[Snapshot] | None = None

    @property
    @abstractmethod
    def seq(self) -> int:
        """Number of committed batches."""

    @abstractmethod
    def _snapshot(self) -> Snapshot:
        """The committed in-memory state, cheaply (taken when a group starts)."""

    @abstractmethod
    def _restore(self, snapshot: Snapshot) -> None:
        """Puts the in-memory state back as `_snapshot` took it."""

    @contextmanager
    def grouped(self) -> Iterator[None]:
        """Commits the batches made inside the block together, once, at its end.

        A group inside a group joins it. An exception inside the block, a batch that
        raised (even if the caller caught it), or a failed commit rolls the whole
        group back, in storage and in memory.
        """
        if self._group is not None:
            yield
            return
        before = self.seq
        group = self._group = _Group(self._snapshot())
        try:
            with self.store.transaction(self.params.tree_id) as txn:
                group.txn = txn
                yield
                if group.failed is not None:  # the caller caught it and went on
                    raise StorageError(
                        f"a batch of the group failed ({group.failed}); "
                        "the whole group was rolled back"
                    ) from group.failed
        except BaseException:
            self._restore(group.snapshot)
            raise
        finally:
            self._group = None
        advance_counter(self._counter, self.params, before, self.seq)

    @contextmanager
    def _transaction(self) -> Iterator[TreeTransaction]:
        """A batch's transaction: its own, committed at the end of the block, or its group's."""
        group = self._group
        if group is None:
            with self.store.transaction(self.params.tree_id) as txn:
                yield txn
            return
        assert group.txn is not None
        if group.failed is not None:
            # Its transaction holds part of the failed batch: nothing more goes in.
            raise StorageError(
                f"an earlier batch of this group failed ({group.failed}); "
                "the group will be rolled back"
            )
        try:
            yield group.txn
        except BaseException as exc:
            group.failed = exc
            raise

    def _committed(self, before: int) -> None:
        """After a batch: advances the counter, unless the batch is in a group (then the
        group's commit does)."""
        if self._group is None:
            advance_counter(self._counter, self.params, before, self.seq)
