"""The baseline users would otherwise pick: AES-GCM blocks addressed directly, no ORAM.

Same interface as `PathOram` (`access_batch` with `in_transaction`), same rows and
sealed state machinery, so the benchmark compares like with like. It hides block
contents but not access patterns: the storage sees which block ids are read and
which are written (see SECURITY.md). Single blocks can be rolled back to an
older authentic copy of themselves; the monotonic counter still catches a
whole-database rollback.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from oram_store._group import Grouped
from oram_store._oram import (
    RandomSource,
    Read,
    TransactionHook,
    Write,
    check_ops,
    open_meta,
    seal_meta,
)
from oram_store._params import OramParams
from oram_store._state import check_fresh
from oram_store._store import CHECKPOINT, BucketStore, StateRecord, TreeTransaction
from otrace.errors import ConfigError, FencingError, IntegrityError
from tee import FreshnessCounter, StateSealer

__all__ = ["DirectBlockStore"]

_SEQ = struct.Struct("<Q")


class DirectBlockStore(Grouped[int]):
    """Encrypted, directly addressed blocks; build with `create` or `open`.

    `with blocks.grouped():` commits the batches inside it in one transaction."""

    def __init__(
        self,
        store: BucketStore,
        params: OramParams,
        key: bytes,
        sealer: StateSealer,
        seq: int,
        *,
        counter: FreshnessCounter | None,
        rng: RandomSource,
    ) -> None:
        if len(key) != 32:
            raise ConfigError("the block key must be 32 bytes")
        self.store, self.params, self._seq = store, params, seq
        self._aead = AESGCM(key)
        self._sealer = sealer
        self._counter = counter
        self._rng = rng
        self._zero = bytes(params.block_size)

    @classmethod
    def create(
        cls,
        store: BucketStore,
        params: OramParams,
        *,
        key: bytes,
        sealer: StateSealer,
        counter: FreshnessCounter | None = None,
        rng: RandomSource | None = None,
    ) -> DirectBlockStore:
        rng = rng or os.urandom
        blank = cls(store, params, key, sealer, 0, counter=counter, rng=rng)
        rows = ((i, 0, blank._seal(i, 0, blank._zero)) for i in range(params.blocks))
        store.create_tree(
            params.tree_id, rows, seal_meta(params, sealer), lambda: blank._state_record(0)
        )
        return cls.open(store, params.tree_id, key=key, sealer=sealer, counter=counter, rng=rng)

    @classmethod
    def open(
        cls,
        store: BucketStore,
        tree_id: str,
        *,
        key: bytes,
        sealer: StateSealer,
        counter: FreshnessCounter | None = None,
        rng: RandomSource | None = None,
    ) -> DirectBlockStore:
        meta = store.load_meta(tree_id)
        if meta is None:
            raise ConfigError(f"no complete block store {tree_id!r} in this store")
        params = open_meta(meta, tree_id, sealer)
        with store.transaction(tree_id) as txn:
            records = txn.load_state()
        if not records:
            raise IntegrityError(f"block store {tree_id!r} has no sealed state")
        last = records[-1]
        context = b"otrace-direct-state\x00" + params.fingerprint()
        (seq,) = _SEQ.unpack(sealer.unseal(last.blob, context))
        if seq != last.seq:
            raise IntegrityError(f"block store {tree_id!r}: state record {last.seq} was moved")
        check_fresh(counter, seq, f"block store {tree_id!r}")
        return cls(store, params, key, sealer, seq, counter=counter, rng=rng or os.urandom)

    def access_batch(
        self,
        ops: Sequence[Read | Write],
        *,
        in_transaction: TransactionHook | None = None,
        paths: int | None = None,
    ) -> list[bytes | None]:
        """Serves `ops` in order: reads the blocks read, writes the blocks written.

        `paths` is accepted for interface parity with `PathOram` and ignored: the
        baseline touches exactly the blocks asked for (it hides contents, not access).
        """
        if not ops:
            return []
        p = self.params
        check_ops(p, ops)
        before = self._seq
        seq = before + 1
        with self._transaction() as txn:
            if txn.latest_seq() != before:
                raise FencingError(f"block store {p.tree_id!r} was committed by another writer")
            results = self._serve(txn, ops, seq)
            txn.append_state(self._state_record(seq))
            txn.prune_state(seq)
            if in_transaction is not None:
                in_transaction(txn, seq)
        self._seq = seq
        self._committed(before)
        return results

    @property
    def seq(self) -> int:
        """Number of committed batches."""
        return self._seq

    def _snapshot(self) -> int:
        return self._seq

    def _restore(self, snapshot: int) -> None:
        self._seq = snapshot

    def _serve(
        self, txn: TreeTransaction, ops: Sequence[Read | Write], seq: int
    ) -> list[bytes | None]:
        reads = sorted({op.block for op in ops if isinstance(op, Read)})
        rows = txn.read_buckets(reads) if reads else {}
        current: dict[int, bytes] = {}
        for block in reads:
            if block not in rows:
                raise IntegrityError(f"encrypted block {block} is missing from storage")
            current[block] = self._open(block, *rows[block])
        results: list[bytes | None] = []
        written: dict[int, bytes] = {}
        for op in ops:
            if isinstance(op, Write):
                current[op.block] = written[op.block] = op.data
                results.append(None)
            else:
                results.append(current[op.block])
        txn.write_buckets([(b, seq, self._seal(b, seq, d)) for b, d in sorted(written.items())])
        return results

    def _seal(self, block: int, version: int, data: bytes) -> bytes:
        nonce = self._rng(12)
        return nonce + self._aead.encrypt(nonce, data, self._ad(block, version))

    def _open(self, block: int, version: int, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], self._ad(block, version))
        except InvalidTag:
            raise IntegrityError(f"encrypted block {block} failed authentication") from None

    def _ad(self, block: int, version: int) -> bytes:
        return (
            b"otrace-block\x00" + self.params.tree_id.encode() + struct.pack("<QQ", block, version)
        )

    def _state_record(self, seq: int) -> StateRecord:
        context = b"otrace-direct-state\x00" + self.params.fingerprint()
        return StateRecord(seq, CHECKPOINT, self._sealer.seal(_SEQ.pack(seq), context))
