"""Greedy eviction of the stash into the union of the paths a batch has read."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

__all__ = ["evict", "path_nodes"]


def path_nodes(height: int, leaves: Iterable[int]) -> set[int]:
    """Heap indices (root = 1) of the union of the root-to-leaf paths of `leaves`."""
    base = 1 << height
    nodes: set[int] = set()
    for leaf in leaves:
        node = base + leaf
        while node and node not in nodes:
            nodes.add(node)
            node >>= 1
    return nodes


def evict(
    height: int,
    slots: int,
    nodes: set[int],
    stash: Iterable[int],
    leaf_of: Callable[[int], int],
    resident: Container[int] = (),
) -> tuple[dict[int, list[int]], list[int]]:
    """Places stash blocks as deep as possible in `nodes` (a union of whole paths).

    Each block starts at the deepest node of `nodes` on its own path; nodes are
    then filled deepest first, and what does not fit moves to the parent. This
    is Path ORAM's greedy eviction generalised to several paths at once.
    Returns `({node: [block, ...]}, [blocks left in the stash])`.

    Blocks waiting at one node can all go to the same ancestors, so which of
    them a full node keeps does not change how many are placed (greedy is
    optimal either way). A full node keeps `resident` blocks first: the blocks
    read from these paths and not remapped, which had a valid placement in
    `nodes` before, so all of them are placed again and only blocks already in
    the stash or remapped by this batch can be left over. That bounds what a
    state delta must carry (`StateCodec.delta`).
    """
    base = 1 << height
    candidates: dict[int, list[int]] = {}
    for block in stash:
        node = base + leaf_of(block)
        while node not in nodes:
            node >>= 1
        candidates.setdefault(node, []).append(block)
    placed: dict[int, list[int]] = {}
    left: list[int] = []
    for node in sorted(nodes, reverse=True):  # larger heap index = same level or deeper
        waiting = candidates.pop(node, None)
        if not waiting:
            continue
        if len(waiting) > slots:
            waiting.sort(key=lambda b: b not in resident)  # stable: residents first
        placed[node] = waiting[:slots]
        if len(waiting) > slots:
            if node == 1:
                left.extend(waiting[slots:])
            else:
                candidates.setdefault(node >> 1, []).extend(waiting[slots:])
    return placed, left
