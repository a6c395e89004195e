"""DraftTree: what every drafter hands to the verifier, and the buffers derived from it.

Node 0 is the root, the last token the target produced and not yet in its KV cache. Every other
node is a draft token whose parent comes before it. Siblings are listed best-first: the sampling
verifier tries them in that order. A chain (prompt lookup, plain drafts) is a tree with one path;
vanilla decoding is the root alone. Batch size is 1, so the tensors carry no batch axis.
The derived buffers are docs/reference.md §2.1's contract: ancestor mask, depths (position offsets) and
root-to-leaf paths, computed here once instead of by each drafter.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class DraftTree:
    tokens: Tensor            # [N] long; tokens[0] is the root
    parents: Tensor           # [N] long; parents[0] = -1, parents[i] < i
    q: Tensor | None = None   # [N, V] distribution node i was drawn from; None = deterministic drafts

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.dim() != 1 or self.parents.shape != (n,) or n < 1:
            raise ValueError("a DraftTree needs 1-D tokens and parents of the same length >= 1")
        if int(self.parents[0]) != -1 or bool((self.parents[1:] >= torch.arange(1, n)).any()):
            raise ValueError("parents must be -1 at the root and point to an earlier node elsewhere")
        if self.q is not None and self.q.shape[0] != n:
            raise ValueError("q must have one row per node")

    @classmethod
    def root_only(cls, root: Tensor) -> "DraftTree":
        return cls(tokens=root.reshape(1).long(), parents=torch.tensor([-1]))

    @classmethod
    def chain(cls, root: Tensor, drafts: Tensor) -> "DraftTree":
        """root followed by drafts[0], drafts[1], ... each the child of the one before."""
        tokens = torch.cat([root.reshape(1), drafts.reshape(-1)]).long()
        return cls(tokens=tokens, parents=torch.arange(-1, tokens.shape[0] - 1))

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @cached_property
    def ancestors(self) -> list[list[int]]:
        """ancestors[i]: node ids from the root to node i, inclusive (plain lists: per-element tensor
        writes in a loop cost more than the verify step's whole mask on a small model)."""
        lines: list[list[int]] = [[0]]
        for i, parent in enumerate(self.parents.tolist()[1:], 1):
            lines.append(lines[parent] + [i])
        return lines

    @cached_property
    def depth(self) -> Tensor:
        """[N] depth of each node (root 0): the position offset of the node in the verify forward."""
        return torch.tensor([len(line) - 1 for line in self.ancestors], dtype=torch.long)

    @cached_property
    def ancestor_mask(self) -> Tensor:
        """[N, N] bool; mask[i, j] is True iff node j is node i or one of its ancestors."""
        rows = [i for i, line in enumerate(self.ancestors) for _ in line]
        cols = [j for line in self.ancestors for j in line]
        mask = torch.zeros(self.size, self.size, dtype=torch.bool)
        mask[rows, cols] = True
        return mask

    @cached_property
    def children(self) -> list[list[int]]:
        """children[i]: the node ids whose parent is i, best-first."""
        kids: list[list[int]] = [[] for _ in range(self.size)]
        for i, p in enumerate(self.parents.tolist()[1:], 1):
            kids[p].append(i)
        return kids

    @cached_property
    def paths(self) -> Tensor:
        """[L, D+1] node ids from the root to each leaf, padded with -1 (EAGLE's retrieve_indices)."""
        lines = [self.ancestors[i] for i, kids in enumerate(self.children) if not kids]
        width = max(len(line) for line in lines)
        return torch.tensor([line + [-1] * (width - len(line)) for line in lines], dtype=torch.long)
