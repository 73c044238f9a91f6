"""Small doubles for ORAM tests: a seeded RNG, an in-memory counter, a tracing store."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from oram_store import (
    BucketStore,
    OramParams,
    PathOram,
    SqlBucketStore,
    StateRecord,
    TreeTransaction,
)
from tee import Sealer

KEY = bytes(range(32))
STATE_KEY = bytes(range(32, 64))


def seeded_rng(seed: int) -> random.Random:
    return random.Random(seed)


def rng_source(seed: int):  # type: ignore[no-untyped-def]
    return seeded_rng(seed).randbytes


class MemoryCounter:
    """FreshnessCounter double; the real one lives in tee/ (platform directory)."""

    def __init__(self) -> None:
        self.value = 0
        self.durable = 0  # what survives an OS crash

    def current(self) -> int:
        return self.value

    def advance(self, value: int, *, durable: bool = True) -> None:
        self.value = max(self.value, value)
        if durable:
            self.durable = max(self.durable, value)


@dataclass
class Trace:
    """What the storage observed, transaction by transaction."""

    reads: list[list[int]] = field(default_factory=list)
    writes: list[list[tuple[int, int, bytes]]] = field(default_factory=list)
    states: list[StateRecord] = field(default_factory=list)


class _TracingTxn(TreeTransaction):
    def __init__(self, inner: TreeTransaction, trace: Trace) -> None:
        self._inner, self._trace = inner, trace

    def read_buckets(self, idxs: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        self._trace.reads.append(list(idxs))
        return self._inner.read_buckets(idxs)

    def write_buckets(self, rows: Sequence[tuple[int, int, bytes]]) -> None:
        self._trace.writes.append(list(rows))
        self._inner.write_buckets(rows)

    def load_state(self) -> list[StateRecord]:
        return self._inner.load_state()

    def latest_seq(self) -> int | None:
        return self._inner.latest_seq()

    def append_state(self, record: StateRecord) -> None:
        self._trace.states.append(record)
        self._inner.append_state(record)

    def prune_state(self, before_seq: int) -> None:
        self._inner.prune_state(before_seq)

    def read_aux(self, name: str) -> bytes | None:
        return self._inner.read_aux(name)

    def write_aux(self, name: str, blob: bytes) -> None:
        self._inner.write_aux(name, blob)


class TracingStore(SqlBucketStore):
    """A real SQL store that also records every bucket index read and row written."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.trace = Trace()

    @contextmanager
    def transaction(self, tree_id: str) -> Iterator[TreeTransaction]:
        with super().transaction(tree_id) as txn:
            yield _TracingTxn(txn, self.trace)


def new_oram(
    store: BucketStore,
    *,
    blocks: int = 64,
    block_size: int = 64,
    batch_size: int = 1,
    cache_levels: int = 2,
    seed: int | None = 1,
    counter: MemoryCounter | None = None,
    tree_id: str = "t",
    **params: int,
) -> PathOram:
    return PathOram.create(
        store,
        OramParams(tree_id, blocks=blocks, block_size=block_size, batch_size=batch_size, **params),
        key=KEY,
        sealer=Sealer.from_key(STATE_KEY),
        counter=counter,
        cache_levels=cache_levels,
        rng=None if seed is None else rng_source(seed),
    )


def reopen(
    oram: PathOram, *, cache_levels: int = 2, counter: MemoryCounter | None = None
) -> PathOram:
    return PathOram.open(
        oram.store,
        oram.params.tree_id,
        key=KEY,
        sealer=Sealer.from_key(STATE_KEY),
        counter=counter,
        cache_levels=cache_levels,
    )


def block(tag: int, size: int = 64) -> bytes:
    return tag.to_bytes(8, "little") * (size // 8)
