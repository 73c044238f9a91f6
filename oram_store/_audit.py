"""Full-tree verification (an fsck): every bucket authenticated, every block where it belongs."""

from __future__ import annotations

from dataclasses import dataclass

from oram_store._codec import BucketCodec
from oram_store._params import EMPTY_SLOT, OramParams
from oram_store._state import ClientState
from oram_store._store import BucketStore
from otrace.errors import IntegrityError

__all__ = ["AuditReport", "audit_tree"]

_CHUNK = 2048


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What a full verification pass found (it raises on any violation)."""

    buckets: int
    blocks_in_tree: int
    blocks_in_stash: int


def audit_tree(
    store: BucketStore, params: OramParams, codec: BucketCodec, state: ClientState
) -> AuditReport:
    """Reads the whole tree root first and checks the Path ORAM invariants.

    Every bucket must match its parent's digest (the root: the sealed root
    digest); every real block must appear exactly once, in the stash or in a
    bucket on the path to its leaf. Raises `IntegrityError` on the first breach.
    """
    expected: dict[int, bytes] = {1: state.root}
    seen: set[int] = set(state.stash)
    in_tree = 0
    with store.transaction(params.tree_id) as txn:
        for level in range(params.height + 1):
            nodes = range(1 << level, 2 << level)
            following: dict[int, bytes] = {}
            for start in range(0, len(nodes), _CHUNK):
                chunk = list(nodes[start : start + _CHUNK])
                rows = txn.read_buckets(chunk)
                for node in chunk:
                    if node not in rows:
                        raise IntegrityError(f"ORAM bucket {node} is missing from storage")
                    version, blob = rows[node]
                    bucket = codec.open(node, version, blob, expected.pop(node))
                    following[2 * node], following[2 * node + 1] = bucket.left, bucket.right
                    for block in bucket.ids:
                        if block == EMPTY_SLOT:
                            continue
                        _check_block(params, state, block, node, level, seen)
                        in_tree += 1
            expected = following
    return AuditReport(params.buckets, in_tree, len(state.stash))


def _check_block(
    params: OramParams, state: ClientState, block: int, node: int, level: int, seen: set[int]
) -> None:
    if block >= params.blocks:
        raise IntegrityError(f"ORAM bucket {node} holds out-of-range block id {block}")
    if block in seen:
        raise IntegrityError(f"ORAM block {block} is stored twice")
    seen.add(block)
    leaf_node = (1 << params.height) + int(state.positions[block])
    if leaf_node >> (params.height - level) != node:
        raise IntegrityError(f"ORAM block {block} sits in bucket {node}, off the path to its leaf")
