"""The one verifier: which draft tokens of a tree the target accepts, and the bonus token after them.

Glossary. *root*: node 0, the target's own last token. *path*: root plus the accepted draft nodes,
each the child of the one before. *accepted* (a): draft tokens on the path. *bonus*: the token the
target draws after the path; it becomes the next root. A step commits a + 1 tokens (root and drafts
to the KV cache) and emits a + 1 new tokens (drafts and bonus); tau counts a + 1.

Greedy (T = 0, docs/reference.md §2.6): a child is accepted iff it equals the target's argmax at its parent;
the deepest accepted node wins (ties: lowest node id); the bonus is the argmax there.

Sampling (T > 0, docs/reference.md §2.7): multi-candidate recursive rejection. At the current node the
children are tried best-first; child x drawn from q is accepted with probability min(1, p(x)/q(x));
on rejection p <- norm(max(0, p - q)). Deterministic drafts (``tree.q is None``) are point masses,
so rejection zeroes p(x) (EAGLE-2's rule); sampled drafts pass the exact distribution each child was
drawn from (SpecInfer / EAGLE-1). If no child is accepted the bonus is drawn from the residual,
otherwise the walk continues; at a leaf the bonus comes from p there. Every p, residuals and bonus
included, is built by ``sampling.to_probs``, so the output distribution is the target's exactly.
This verifier knows nothing about drafters, models or tokenizers: a tree and logits in, a Verdict out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.sampling import SamplingParams, sample, to_probs
from harness.tree import DraftTree


@dataclass(frozen=True)
class Verdict:
    path: Tensor     # [a+1] node ids, root first
    bonus: int       # token drawn by the target after the path; the next root
    accepted: int    # a: draft tokens accepted (tau counts a + 1 per step)


class Verifier:
    """Exact (lossless) acceptance for any DraftTree; greedy at T = 0."""

    lossless = True

    def verify(self, tree: DraftTree, logits: Tensor, sampling: SamplingParams, rng: torch.Generator) -> Verdict:
        """logits: [N, V] target logits at each tree node (the prediction for the node's next token)."""
        if sampling.greedy:
            return self._greedy(tree, logits)
        return self._sample(tree, logits, sampling, rng)

    @staticmethod
    def _greedy(tree: DraftTree, logits: Tensor) -> Verdict:
        argmax = logits.argmax(-1).tolist()
        tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
        depth = [0] * tree.size
        best = 0
        for i in range(1, tree.size):
            parent = parents[i]
            if (parent == 0 or depth[parent] > 0) and tokens[i] == argmax[parent]:
                depth[i] = depth[parent] + 1
                if depth[i] > depth[best]:
                    best = i
        path = tree.ancestor_mask[best].nonzero().flatten()
        return Verdict(path=path, bonus=argmax[best], accepted=depth[best])

    @staticmethod
    def _sample(tree: DraftTree, logits: Tensor, sampling: SamplingParams, rng: torch.Generator) -> Verdict:
        tokens = tree.tokens.tolist()
        node, path = 0, [0]
        while True:
            p = to_probs(logits[node], sampling)
            accepted_child = None
            for child in tree.children[node]:
                x = tokens[child]
                q = None if tree.q is None else tree.q[child].float()
                qx = 1.0 if q is None else float(q[x])
                if qx > 0 and float(torch.rand((), generator=rng)) * qx < float(p[x]):
                    accepted_child = child
                    break
                residual = p.clone() if q is None else (p - q).clamp_min(0.0)
                if q is None:
                    residual[x] = 0.0
                total = residual.sum()
                if total > 0:  # a zero residual has probability 0 (it needs p == q); keep p then
                    p = residual / total
            if accepted_child is None:
                return Verdict(path=torch.tensor(path), bonus=sample(p, rng), accepted=len(path) - 1)
            node = accepted_child
            path.append(node)
