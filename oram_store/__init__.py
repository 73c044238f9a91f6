"""Path ORAM store: an oblivious block device over untrusted SQL storage.

The store knows nothing of spans: it stores `blocks` fixed-size blocks, reads
and writes them in padded batches, and guarantees that the storage sees only
fixed-size ciphertext and uniformly random paths, and that any tampering,
swapping or rollback of what it stored is detected.

    store = SqlBucketStore("sqlite:///otrace-data/otrace.sqlite")
    oram = PathOram.create(store, OramParams("spans", blocks=1 << 16), key=k,
                           sealer=tee.Sealer.from_key(state_key))
    oram.access_batch([Write(7, data), Read(3)])
"""

from oram_store._audit import AuditReport
from oram_store._codec import Bucket, BucketCodec
from oram_store._direct import DirectBlockStore
from oram_store._eviction import path_nodes
from oram_store._oram import OramStats, PathOram, Read, TransactionHook, Write
from oram_store._params import DEFAULT_BLOCK_SIZE, OramParams
from oram_store._state import FreshnessCounter, StateSealer
from oram_store._store import BucketStore, SqlBucketStore, StateRecord, TreeTransaction

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "AuditReport",
    "Bucket",
    "BucketCodec",
    "BucketStore",
    "DirectBlockStore",
    "FreshnessCounter",
    "OramParams",
    "OramStats",
    "PathOram",
    "Read",
    "SqlBucketStore",
    "StateRecord",
    "StateSealer",
    "TransactionHook",
    "TreeTransaction",
    "Write",
    "path_nodes",
]
