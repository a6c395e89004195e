"""Before a target is measured: do its tree forwards and one-token steps give the model's own logits?

Lossless speculative decoding rests on one equality: the logits the verifier reads for a tree node
are the logits vanilla decoding would compute at that position. It breaks silently when a family
masks or scales differently from what the Target assumes (a sliding window, a logit scale, a cache
rule), and greedy-equality tests rarely see it, because a small logit error seldom flips an argmax.
So every target is checked when it loads: a random prompt longer than its longest attention window,
then a small random tree scored in one forward, and the deepest path fed one token at a time (the
vanilla path), each compared with the model's own full forward over prompt + path (no cache). A
difference beyond tolerance refuses the target with the measured figure.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from harness.errors import UserError
from harness.target import Target
from harness.tree import DraftTree

# Relative to the largest reference logit: fp32 kernels agree to ~1e-6 here; half precision rounds per op.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 3e-2, torch.float16: 1e-2}
PARENTS = (-1, 0, 0, 1, 1, 2, 4)   # 7 nodes, depth 3: siblings, a chain and a branch


@dataclass(frozen=True)
class CheckResult:
    prompt_tokens: int
    tree_nodes: int
    tree_difference: float         # max |tree logit - full-forward logit| / max |full-forward logit|
    step_difference: float         # the same for one-token steps along the deepest path
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        return max(self.tree_difference, self.step_difference) <= self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@torch.no_grad()
def measure(target: Target, seed: int = 0, min_prompt: int = 24) -> CheckResult:
    """Tree and step logits against the model's own forward; leaves the target's cache empty."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    low = min(2, target.vocab_size - 1)   # skip the usual special ids where the vocabulary allows
    prompt_len = min(max(min_prompt, target.layout.longest_window + 8), target.max_len - len(PARENTS) - 1)
    prompt = torch.randint(low, target.vocab_size, (prompt_len,), generator=generator)
    tree = DraftTree(torch.randint(low, target.vocab_size, (len(PARENTS),), generator=generator),
                     torch.tensor(PARENTS))
    scale = 0.0
    tree_diff = step_diff = 0.0
    try:
        target.prefill(prompt)
        tree_logits = target.score_tree(tree).logits
        deepest, reference = [], None
        for row in tree.paths.tolist():
            nodes = [n for n in row if n >= 0]
            path_reference = _full_forward(target, torch.cat([prompt, tree.tokens[nodes]]))[prompt_len:]
            scale = max(scale, float(path_reference.abs().max()))
            tree_diff = max(tree_diff, float((tree_logits[nodes] - path_reference).abs().max()))
            if len(nodes) > len(deepest):
                deepest, reference = nodes, path_reference
        target.prefill(prompt)
        for i, node in enumerate(deepest):
            logits = target.score_tree(DraftTree.root_only(tree.tokens[node])).logits[0]
            target.commit(torch.tensor([0]))
            step_diff = max(step_diff, float((logits - reference[i]).abs().max()))
    finally:
        target.reset()
    scale = max(scale, 1.0)
    return CheckResult(prompt_len, tree.size, tree_diff / scale, step_diff / scale,
                       TOLERANCE.get(target.dtype, 3e-2), time.perf_counter() - start)


def require(target: Target, seed: int = 0) -> CheckResult:
    """measure(), refusing the target when it fails."""
    result = measure(target, seed)
    if not result.passed:
        which = "tree forward" if result.tree_difference > result.tolerance else "one-token step"
        raise UserError(f"target {target.model_id!r} failed the lossless self-check: its {which} differs from "
                        f"the model's own forward by {max(result.tree_difference, result.step_difference):.2e} "
                        f"(relative; tolerance {result.tolerance:.0e}), so speculative output would not equal "
                        f"vanilla decoding; this model family is not supported")
    return result


def _full_forward(target: Target, ids: torch.Tensor) -> torch.Tensor:
    """The model's own logits at every position of ids [T], no cache: the reference."""
    return target.model(ids.to(target.device)[None], use_cache=False).logits[0].float()
