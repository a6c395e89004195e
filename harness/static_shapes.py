"""Fixed-shape inputs for the target's tree forward, so torch.compile and CUDA graphs can capture it.

The eager forward feeds N tree nodes against exactly L committed cache slots; both change every
step, and a captured graph (``torch.compile(mode="reduce-overhead")`` records CUDA graphs) replays
one shape only. Here the tree is padded to P = the next power of two and attention runs over a
window of W slots (L + P rounded up to ``bucket``), so a whole generation needs a handful of shapes.
Padding rows attend only to themselves and window slots past the tree are masked out, so the real
nodes' logits are the eager path's; the KV the padding writes lies past the tree and is dropped at
commit like any rejected node's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from harness.tree import DraftTree

COMPILE_MODES = ("off", "static", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class StaticStep:
    """One padded tree forward: ids and positions [1, P], mask [1, 1, P, W], cache slots to write [P], and the
    rotary position of each window slot [W] (for sliding-window layers)."""
    ids: Tensor
    positions: Tensor
    mask: Tensor
    write_at: Tensor
    key_positions: Tensor
    nodes: int          # the real tree nodes, rows 0 .. nodes-1


def compiled(step: Callable, mode: str) -> Callable | None:
    """The fixed-shape step to run under a compile mode: None when off, the step itself when "static"
    (eager), else torch.compile(step) ("reduce-overhead" records CUDA graphs on a GPU)."""
    if mode == "off":
        return None
    if mode == "static":
        return step
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(step, mode=None if mode == "default" else mode)


def padded_size(nodes: int) -> int:
    return 1 << max(nodes - 1, 0).bit_length()


def window_size(needed: int, bucket: int, max_len: int) -> int:
    return min(max_len, -(-needed // bucket) * bucket)


def tree_step(tree: DraftTree, length: int, bucket: int, max_len: int, device: torch.device) -> StaticStep:
    """The padded inputs for scoring tree after ``length`` committed slots (boolean mask: True = may attend)."""
    nodes, padded = tree.size, padded_size(tree.size)
    window = window_size(length + padded, bucket, max_len)
    ids = torch.zeros(1, padded, dtype=torch.long)
    ids[0, :nodes] = tree.tokens
    positions = torch.full((1, padded), length, dtype=torch.long)
    positions[0, :nodes] += tree.depth
    allowed = torch.zeros(1, 1, padded, window, dtype=torch.bool)
    allowed[0, 0, :nodes, :length] = True
    allowed[0, 0, :nodes, length:length + nodes] = tree.ancestor_mask
    pad = torch.arange(nodes, padded)
    allowed[0, 0, pad, length + pad] = True
    write_at = torch.arange(length, length + padded)
    key_positions = torch.arange(window)
    key_positions[length:length + padded] = positions[0]
    return StaticStep(ids.to(device), positions.to(device), allowed.to(device), write_at.to(device),
                      key_positions.to(device), nodes)
