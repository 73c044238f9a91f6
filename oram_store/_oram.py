"""Path ORAM (Stefanov et al., CCS'13) with batched, write-through, integrity-checked access.

One `access_batch` call serves up to `batch_size` logical reads and writes:
it reads the union of `batch_size` uniformly random paths (one per distinct
block, the rest dummies) in one query, serves every operation from the stash,
remaps each touched block to a fresh random leaf, evicts greedily into the same
paths and writes them back, re-encrypted, together with the sealed client
state in one storage transaction. Reads and writes do identical work.

The top `cache_levels` levels are also kept decrypted in memory: they are still
written back with every batch (so a crash never loses them and the storage
sees whole paths written), but never read back from storage.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from oram_store._audit import AuditReport, audit_tree
from oram_store._codec import EMPTY_DIGEST, Bucket, BucketCodec
from oram_store._eviction import evict, path_nodes
from oram_store._group import Grouped
from oram_store._params import EMPTY_SLOT, FORMAT, OramParams
from oram_store._state import ClientState, FreshnessCounter, StateCodec, StateSealer, check_fresh
from oram_store._store import BucketStore, TreeTransaction
from otrace.errors import (
    ConfigError,
    FencingError,
    IntegrityError,
    InvalidRequest,
    StashOverflow,
)

__all__ = ["OramStats", "PathOram", "Read", "TransactionHook", "Write"]

RandomSource = Callable[[int], bytes]
TransactionHook = Callable[[TreeTransaction, int], None]
ProgressCallback = Callable[[int, int], None]
_META = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Read:
    """Read one block; the result is its data (zeros if never written)."""

    block: int


@dataclass(frozen=True, slots=True)
class Write:
    """Replace one block's data (exactly `block_size` bytes); the result is None."""

    block: int
    data: bytes = field(repr=False)


def check_ops(params: OramParams, ops: Sequence[Read | Write]) -> None:
    """Refuses out-of-range block ids and writes of the wrong size (`InvalidRequest`)."""
    for op in ops:
        if not 0 <= op.block < params.blocks:
            raise InvalidRequest(f"block id {op.block} is outside 0..{params.blocks - 1}")
        if isinstance(op, Write) and len(op.data) != params.block_size:
            raise InvalidRequest(
                f"block {op.block}: data must be exactly {params.block_size} bytes, "
                f"got {len(op.data)}"
            )


@dataclass(slots=True)
class OramStats:
    """Counters for metrics and tests; none of them is secret from the storage."""

    batches: int = 0
    logical_accesses: int = 0
    buckets_read: int = 0
    buckets_written: int = 0
    stash_size: int = 0
    stash_peak: int = 0


@dataclass(slots=True)
class _Snapshot:
    """The committed state when a group of batches began (`Grouped`)."""

    state: ClientState
    cache: dict[int, Bucket]
    stats: OramStats
    # Leaves of `state.positions` the group changed in place, as they were committed.
    undo: dict[int, int] = field(default_factory=dict)


class PathOram(Grouped[_Snapshot]):
    """A Path ORAM over an untrusted `BucketStore`; build with `create` or `open`.

    `with oram.grouped():` commits the batches inside it in one transaction."""

    def __init__(
        self,
        store: BucketStore,
        params: OramParams,
        codec: BucketCodec,
        states: StateCodec,
        state: ClientState,
        *,
        counter: FreshnessCounter | None,
        cache_levels: int,
        rng: RandomSource,
    ) -> None:
        self.store = store
        self.params = params
        self.stats = OramStats(stash_size=len(state.stash), stash_peak=len(state.stash))
        self._codec = codec
        self._states = states
        self._state = state
        self._counter = counter
        self._cache_levels = min(cache_levels, params.height + 1)
        self._cache: dict[int, Bucket] = {}
        self._rng = rng
        self._zero = bytes(params.block_size)

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def create(
        cls,
        store: BucketStore,
        params: OramParams,
        *,
        key: bytes,
        sealer: StateSealer,
        counter: FreshnessCounter | None = None,
        cache_levels: int = 6,
        rng: RandomSource | None = None,
        progress: ProgressCallback | None = None,
    ) -> PathOram:
        """Writes a new tree of empty buckets in one streaming pass and opens it."""
        _check_format(params)
        rng = rng or os.urandom
        codec = BucketCodec(params, key)
        states = StateCodec(params, sealer)
        roots: list[bytes] = []
        rows = _empty_tree_rows(params, codec, rng, roots, progress)
        positions = (
            np.frombuffer(rng(4 * params.blocks), dtype="<u4") & (params.leaves - 1)
        ).astype(np.uint32)
        # The first checkpoint needs the root digest, known only once every row
        # has streamed out: the generator fills `roots` as it finishes.
        store.create_tree(
            params.tree_id,
            rows,
            seal_meta(params, sealer),
            lambda: states.checkpoint(ClientState(0, roots[0], positions, {})),
        )
        if counter is not None:
            counter.advance(0)
        return cls.open(
            store,
            params.tree_id,
            key=key,
            sealer=sealer,
            counter=counter,
            cache_levels=cache_levels,
            rng=rng,
        )

    @classmethod
    def open(
        cls,
        store: BucketStore,
        tree_id: str,
        *,
        key: bytes,
        sealer: StateSealer,
        counter: FreshnessCounter | None = None,
        cache_levels: int = 6,
        rng: RandomSource | None = None,
    ) -> PathOram:
        """Opens an existing tree: verifies metadata, restores sealed state, warms the cache."""
        meta = store.load_meta(tree_id)
        if meta is None:
            raise ConfigError(
                f"no complete ORAM tree {tree_id!r} in this store "
                "(never created, or its creation was interrupted: create it again)"
            )
        params = open_meta(meta, tree_id, sealer)
        _check_format(params)
        states = StateCodec(params, sealer)
        with store.transaction(tree_id) as txn:
            state = states.restore(txn.load_state())
        check_fresh(counter, state.seq, f"ORAM tree {tree_id!r}")
        oram = cls(
            store,
            params,
            BucketCodec(params, key),
            states,
            state,
            counter=counter,
            cache_levels=cache_levels,
            rng=rng or os.urandom,
        )
        oram._warm_cache()
        return oram

    def _warm_cache(self) -> None:
        if self._cache_levels == 0:
            return
        nodes = range(1, 1 << self._cache_levels)
        with self.store.transaction(self.params.tree_id) as txn:
            self._cache = self._fetch(txn, list(nodes), {})

    # ------------------------------------------------------------------- access

    def read(self, block: int) -> bytes:
        result = self.access_batch([Read(block)])[0]
        assert result is not None
        return result

    def write(self, block: int, data: bytes) -> None:
        self.access_batch([Write(block, data)])

    def access_batch(
        self,
        ops: Sequence[Read | Write],
        *,
        in_transaction: TransactionHook | None = None,
        paths: int | None = None,
    ) -> list[bytes | None]:
        """Serves `ops` in order with one padded batch of `paths` path accesses.

        `paths` defaults to `batch_size` and may be smaller (a caller with its own
        fixed batch shape, e.g. the query budget), never larger; at most `paths`
        distinct blocks per call. `in_transaction(txn, seq)` runs inside the
        batch's storage transaction, so a caller's own rows (e.g. an ingest
        watermark) commit atomically with the paths. Nothing in memory or in
        storage changes unless the whole batch commits (in `grouped`, the group).
        """
        if not ops:
            return []
        p = self.params
        width = p.batch_size if paths is None else paths
        if not 1 <= width <= p.batch_size:
            raise InvalidRequest(f"paths must be between 1 and the batch size {p.batch_size}")
        distinct = self._validate(ops, width)
        # `width` fresh leaves: new homes for the real blocks, paths for the dummies.
        fresh = self._random_leaves(width)
        positions = self._state.positions
        read_leaves = [int(positions[b]) for b in distinct] + fresh[len(distinct) :]
        remap = dict(zip(distinct, fresh[: len(distinct)], strict=True))
        nodes = path_nodes(p.height, read_leaves)
        seq = self._state.seq + 1
        with self._transaction() as txn:
            self._check_sole_writer(txn)
            fetch = sorted(n for n in nodes if n >= 1 << self._cache_levels)
            old = self._fetch(txn, fetch, self._cache)
            stash = dict(self._state.stash)
            resident: set[int] = set()
            for node in nodes:
                bucket = old[node]
                for block, data in zip(bucket.ids, bucket.data, strict=True):
                    if block != EMPTY_SLOT:
                        stash[block] = data
                        resident.add(block)
            resident.difference_update(remap)
            results = self._serve(ops, stash)
            new, root = self._write_back(txn, nodes, old, stash, remap, seq, resident)
            state = self._commit_state(txn, seq, root, stash, remap)
            if in_transaction is not None:
                in_transaction(txn, seq)
        self._after_commit(state, new, remap, len(ops), len(fetch), len(nodes))
        return results

    def _check_sole_writer(self, txn: TreeTransaction) -> None:
        latest = txn.latest_seq()
        if latest != self._state.seq:
            raise FencingError(
                f"ORAM tree {self.params.tree_id!r} is at commit {latest} in storage but this "
                f"writer is at {self._state.seq}: another writer has committed; reopen the tree"
            )

    def _validate(self, ops: Sequence[Read | Write], width: int) -> list[int]:
        check_ops(self.params, ops)
        distinct = list(dict.fromkeys(op.block for op in ops))
        if len(distinct) > width:
            raise InvalidRequest(f"{len(distinct)} distinct blocks in one batch of {width} paths")
        return distinct

    def _serve(self, ops: Sequence[Read | Write], stash: dict[int, bytes]) -> list[bytes | None]:
        results: list[bytes | None] = []
        for op in ops:
            if isinstance(op, Write):
                stash[op.block] = op.data
                results.append(None)
            else:
                results.append(stash.get(op.block, self._zero))
        return results

    def _fetch(
        self, txn: TreeTransaction, fetch: list[int], cached: dict[int, Bucket]
    ) -> dict[int, Bucket]:
        """Reads `fetch` from storage and verifies each bucket against its parent, root first."""
        rows = txn.read_buckets(fetch)
        out = dict(cached)
        for node in fetch:  # ascending: a parent always precedes its children
            row = rows.get(node)
            if row is None:
                raise IntegrityError(f"ORAM bucket {node} is missing from storage")
            if node == 1:
                expected = self._state.root
            else:
                parent = out[node >> 1]
                expected = parent.right if node & 1 else parent.left
            out[node] = self._codec.open(node, row[0], row[1], expected)
        self.stats.buckets_read += len(fetch)
        return out

    def _write_back(
        self,
        txn: TreeTransaction,
        nodes: set[int],
        old: dict[int, Bucket],
        stash: dict[int, bytes],
        remap: dict[int, int],
        seq: int,
        resident: set[int],
    ) -> tuple[dict[int, Bucket], bytes]:
        p = self.params
        positions = self._state.positions
        placed, _ = evict(
            p.height,
            p.slots,
            nodes,
            stash,
            lambda b: remap[b] if b in remap else int(positions[b]),
            resident,
        )
        leaf_base = 1 << p.height
        new: dict[int, Bucket] = {}
        digests: dict[int, bytes] = {}
        rows: list[tuple[int, int, bytes]] = []
        nonces = self._rng(12 * len(nodes))
        for i, node in enumerate(sorted(nodes, reverse=True)):  # children before parents
            ids = placed.get(node, [])
            data = [stash.pop(b) for b in ids]
            pad = p.slots - len(ids)
            if node >= leaf_base:
                left = right = EMPTY_DIGEST
            else:
                left = digests.get(2 * node, old[node].left)
                right = digests.get(2 * node + 1, old[node].right)
            bucket = Bucket(ids + [EMPTY_SLOT] * pad, data + [self._zero] * pad, left, right)
            blob, digests[node] = self._codec.seal(node, seq, bucket, nonces[12 * i : 12 * i + 12])
            rows.append((node, seq, blob))
            new[node] = bucket
        if len(stash) > p.stash_bound:
            raise StashOverflow(
                f"ORAM stash would hold {len(stash)} blocks after eviction, above its bound of "
                f"{p.stash_bound}; the batch was not committed"
            )
        txn.write_buckets(rows)
        return new, digests[1]

    def _commit_state(
        self,
        txn: TreeTransaction,
        seq: int,
        root: bytes,
        stash: dict[int, bytes],
        remap: dict[int, int],
    ) -> ClientState:
        p = self.params
        if p.is_checkpoint(seq):
            positions = self._state.positions.copy()
            for block, leaf in remap.items():
                positions[block] = leaf
            state = ClientState(seq, root, positions, stash)
            txn.append_state(self._states.checkpoint(state))
            txn.prune_state(seq)
            return state
        state = ClientState(seq, root, self._state.positions, stash)
        before = self._state.stash
        changed = {b: data for b, data in stash.items() if b in remap or b not in before}
        txn.append_state(self._states.delta(state, remap.items(), changed))
        return state

    def _after_commit(
        self,
        state: ClientState,
        new: dict[int, Bucket],
        remap: dict[int, int],
        ops: int,
        fetched: int,
        written: int,
    ) -> None:
        before = self._state.seq
        if state.positions is self._state.positions:
            group = self._group
            if group is not None and state.positions is group.snapshot.state.positions:
                undo = group.snapshot.undo
                for block in remap:
                    undo.setdefault(block, int(state.positions[block]))
            for block, leaf in remap.items():
                state.positions[block] = leaf
        self._state = state
        limit = 1 << self._cache_levels
        for node, bucket in new.items():
            if node < limit:
                self._cache[node] = bucket
        self._committed(before)
        s = self.stats
        s.batches += 1
        s.logical_accesses += ops
        s.buckets_written += written
        s.stash_size = len(state.stash)
        s.stash_peak = max(s.stash_peak, s.stash_size)

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(self._state, dict(self._cache), replace(self.stats))

    def _restore(self, snapshot: _Snapshot) -> None:
        positions = snapshot.state.positions
        for block, leaf in snapshot.undo.items():
            positions[block] = leaf
        self._state, self._cache, self.stats = snapshot.state, snapshot.cache, snapshot.stats

    def _random_leaves(self, count: int) -> list[int]:
        raw = np.frombuffer(self._rng(4 * count), dtype="<u4") & (self.params.leaves - 1)
        return [int(x) for x in raw]

    # ------------------------------------------------------------ introspection

    @property
    def seq(self) -> int:
        """Number of committed batches."""
        return self._state.seq

    def audit(self) -> AuditReport:
        """Verifies the whole tree and the placement of every block (reads every bucket)."""
        return audit_tree(self.store, self.params, self._codec, self._state)

    def stash_blocks(self) -> frozenset[int]:
        return frozenset(self._state.stash)

    def leaf_of(self, block: int) -> int:
        return int(self._state.positions[block])


def _empty_tree_rows(
    params: OramParams,
    codec: BucketCodec,
    rng: RandomSource,
    roots: list[bytes],
    progress: ProgressCallback | None,
) -> Iterator[tuple[int, int, bytes]]:
    """Yields every bucket of an empty tree, leaves first, each freshly encrypted.

    Only two levels of digests are held in memory at a time (32 bytes a bucket).
    """
    done = 0
    below = b""
    for level in range(params.height, -1, -1):
        first, count = 1 << level, 1 << level
        digests = bytearray(32 * count)
        nonces = rng(12 * count)
        leaf_plain = codec.empty_plaintext(EMPTY_DIGEST, EMPTY_DIGEST)
        for i in range(count):
            if level == params.height:
                plain = leaf_plain
            else:
                plain = codec.empty_plaintext(
                    below[64 * i : 64 * i + 32], below[64 * i + 32 : 64 * i + 64]
                )
            blob, digest = codec.seal_plaintext(first + i, 0, plain, nonces[12 * i : 12 * i + 12])
            digests[32 * i : 32 * i + 32] = digest
            yield first + i, 0, blob
        done += count
        if progress is not None:
            progress(done, params.buckets)
        below = bytes(digests)
    roots.append(below)


def _check_format(params: OramParams) -> None:
    if params.format != FORMAT:
        raise ConfigError(
            f"ORAM tree {params.tree_id!r} is in storage format {params.format} (another "
            f"tree geometry and state record layout); this version opens format {FORMAT} "
            "only: create a new tree (an old one cannot be converted in place)"
        )


def seal_meta(params: OramParams, sealer: StateSealer) -> bytes:
    body = params.to_json()
    tag = sealer.seal(params.fingerprint(), b"otrace-oram-meta\x00" + params.tree_id.encode())
    return _META.pack(len(body)) + body + tag


def open_meta(meta: bytes, tree_id: str, sealer: StateSealer) -> OramParams:
    (size,) = _META.unpack_from(meta)
    params = OramParams.from_json(meta[_META.size : _META.size + size])
    if params.tree_id != tree_id:
        raise IntegrityError(f"ORAM metadata for {tree_id!r} names tree {params.tree_id!r}")
    expected = sealer.unseal(meta[_META.size + size :], b"otrace-oram-meta\x00" + tree_id.encode())
    if not hmac.compare_digest(expected, params.fingerprint()):
        raise IntegrityError(f"ORAM metadata for {tree_id!r} was altered")
    return params
