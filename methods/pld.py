"""Prompt lookup decoding (PLD): copy the continuation of an earlier n-gram match as a draft chain.

Follows Spec-Bench's PLD (docs/reference.md §1.2): for n = max_ngram .. min_ngram, find the earliest earlier
occurrence of the last n tokens whose next ``num_draft`` tokens lie inside the context, and propose
those tokens. One difference: with no match it proposes the root alone, where the reference feeds
a placeholder token, which costs a tree slot and can never be accepted. Training-free; verified
by the common verifier, so it is lossless at any temperature (the published PLD is greedy only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.drafter import METHODS, Drafter
from harness.sampling import SamplingParams
from harness.target import TargetOut
from harness.tree import DraftTree
from harness.verify import Verdict


@dataclass(frozen=True)
class PldOptions:
    max_ngram: int = 3      # draft_matching_window_size
    min_ngram: int = 1
    num_draft: int = 10     # draft_num_candidate_tokens


@METHODS.register("pld", "prompt-lookup")
class PromptLookup(Drafter):
    summary = "prompt lookup decoding: n-gram match against the context, training-free"
    Options = PldOptions

    def start(self, prompt: Tensor, out: TargetOut, sampling: SamplingParams) -> None:
        super().start(prompt, out, sampling)
        self.context: list[int] = prompt.tolist()

    def propose(self, root: Tensor) -> DraftTree:
        context = torch.tensor(self.context + [int(root)])
        return DraftTree.chain(root, self._lookup(context))

    def accept(self, tree: DraftTree, verdict: Verdict, out: TargetOut) -> None:
        self.context.extend(tree.tokens[verdict.path].tolist())

    def _lookup(self, context: Tensor) -> Tensor:
        length, k = context.shape[0], self.options.num_draft
        for n in range(self.options.max_ngram, self.options.min_ngram - 1, -1):
            if length < n + 1:
                continue
            windows = context.unfold(0, n, 1)                   # [length - n + 1, n]
            hits = (windows == context[-n:]).all(dim=1).nonzero().flatten()
            hits = hits[hits + n + k <= length]                 # the whole continuation must exist
            if hits.numel():
                start = int(hits[0]) + n
                return context[start:start + k]
        return context[:0]
