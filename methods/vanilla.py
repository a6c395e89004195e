"""Vanilla autoregressive decoding: the root alone, one token per target forward.

It runs through the same Target, verifier and loop as every speculative method, so the speedup
denominator differs from the methods only in the algorithm (docs/reference.md §1.1, "same-kernel loop").
"""
from torch import Tensor

from harness.drafter import METHODS, Drafter
from harness.tree import DraftTree


@METHODS.register("vanilla", "baseline", "ar")
class Vanilla(Drafter):
    summary = "autoregressive decoding, one token per target forward (the speedup baseline)"

    def propose(self, root: Tensor) -> DraftTree:
        return DraftTree.root_only(root)
