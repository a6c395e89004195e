"""Medusa's static tree: lists of top-k index paths ("medusa_choices") and the buffers built from them once.

docs/reference.md §2.3 / §1.7: a choice is a path of top-k ranks, element d being the rank taken from head d;
the tree holds one node per choice, whose parent is the choice without its last element. Sorting the
choices by (length, ranks) puts every parent before its children and siblings best-first. A node at
depth d with last rank r reads slot (d - 1) * top_k + r of the flat array of the heads' top-k tokens.

Medusa's default ``mc_sim_7b_63`` was chosen from measured head accuracies by simulation. Here
``choices_from_accuracies`` makes the same kind of choice in closed form: with independent heads a node
is accepted with the product of the rank accuracies along its path, and the expected acceptance length
is 1 + the sum of these products over the tree; the ``size`` most likely paths maximise it, and they form
a prefix-closed set because every factor is <= 1. Best-first search finds them without enumerating all.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

RANK_TAIL = 0.3   # assumed: the mass missed at rank 0 falls geometrically over ranks 1, 2, ... at this rate


def default_top1(heads: int) -> list[float]:
    """Assumed top-1 accuracies when none were measured: 0.6 for head 1, times 0.8 per further head."""
    return [0.6 * 0.8**k for k in range(heads)]


def rank_accuracies(top1: float, ranks: int) -> list[float]:
    """Chance that the right token is the head's rank-r candidate, r = 0 .. ranks-1."""
    return [top1] + [(1 - top1) * RANK_TAIL * (1 - RANK_TAIL) ** (r - 1) for r in range(1, ranks)]


def choices_from_accuracies(top1: Sequence[float], size: int, top_k: int) -> list[tuple[int, ...]]:
    """The ``size`` paths (at most len(top1) deep, ranks < top_k) with the highest acceptance chance, sorted."""
    table = [rank_accuracies(a, top_k) for a in top1]
    # Every path is generated exactly once: as its parent's first child or as its previous sibling's successor.
    frontier: list[tuple[float, tuple[int, ...], float]] = [(-table[0][0], (0,), 1.0)]   # (-chance, path, parent's)
    chosen: list[tuple[int, ...]] = []
    while frontier and len(chosen) < size:
        negative, path, parent = heapq.heappop(frontier)
        chosen.append(path)
        if len(path) < len(table):
            heapq.heappush(frontier, (negative * table[len(path)][0], path + (0,), -negative))
        if path[-1] + 1 < top_k:
            heapq.heappush(frontier, (-parent * table[len(path) - 1][path[-1] + 1], path[:-1] + (path[-1] + 1,), parent))
    return sorted(chosen, key=lambda c: (len(c), c))


@dataclass(frozen=True)
class TreeBuffers:
    parents: Tensor   # [N] long, root included (parents[0] = -1)
    slots: Tensor     # [N - 1] long: index of each draft node in the flat [heads * top_k] top-k tokens
    heads: int        # heads the tree reads (its depth)
    top_k: int        # candidates per head it reads (largest rank + 1)


def build_buffers(choices: Sequence[Sequence[int]]) -> TreeBuffers:
    paths = sorted({tuple(int(r) for r in c) for c in choices}, key=lambda c: (len(c), c))
    if not paths or len(paths) != len(choices) or any(not p or min(p) < 0 for p in paths):
        raise ValueError("tree choices must be distinct, non-empty paths of ranks >= 0")
    node = {p: i for i, p in enumerate(paths, 1)}
    missing = [p for p in paths if len(p) > 1 and p[:-1] not in node]
    if missing:
        raise ValueError(f"tree choices must contain every prefix of a path; missing the parent of {missing[0]}")
    top_k = max(max(p) for p in paths) + 1
    parents = [-1] + [node.get(p[:-1], 0) for p in paths]
    slots = [(len(p) - 1) * top_k + p[-1] for p in paths]
    return TreeBuffers(parents=torch.tensor(parents), slots=torch.tensor(slots),
                       heads=max(len(p) for p in paths), top_k=top_k)
