"""The decoding loop shared by every method: prefill, then draft, verify, commit, accept.

It knows no method, no suite and no text: token ids in, token ids, acceptance lengths and stage
times out. The prefill forward counts as a step that emits one token (the first root), so for every
method sum(accept_lengths) == len(tokens) and vanilla's accept_lengths are all 1.
"""
from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from harness.drafter import Drafter
from harness.errors import UserError
from harness.sampling import SamplingParams, sample, to_probs
from harness.target import ContextFull, Target
from harness.tree import DraftTree
from harness.verify import Verifier


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)          # new tokens, up to and including a stop token
    accept_lengths: list[int] = field(default_factory=list)  # per target forward: tokens it emitted
    tree_sizes: list[int] = field(default_factory=list)      # per verify forward: nodes scored
    stop_reason: str = ""                                     # stop_token | max_new_tokens | max_len
    prefill_time: float = 0.0                                 # seconds, prefill forward and first token
    draft_time: float = 0.0                                   # seconds in propose() and accept()
    verify_time: float = 0.0                                  # seconds in score_tree, verify and commit

    def emit(self, new: list[int], stop_ids: frozenset[int], max_new_tokens: int) -> bool:
        """Append one step's tokens, cut at a stop token or the budget; True when generation is over."""
        for i, token in enumerate(new):
            if token in stop_ids:
                new, self.stop_reason = new[: i + 1], "stop_token"
                break
        room = max_new_tokens - len(self.tokens)
        if len(new) > room:
            new, self.stop_reason = new[:room], "max_new_tokens"
        self.tokens.extend(new)
        self.accept_lengths.append(len(new))
        if not self.stop_reason and len(self.tokens) >= max_new_tokens:
            self.stop_reason = "max_new_tokens"
        return bool(self.stop_reason)


class PromptTooLong(UserError):
    """A turn's prompt does not fit the target's context. The runner records that question as skipped and
    goes on; any other caller gets the one-line error it got from Target.prefill before."""


class WholeTurnBaseline(Drafter):
    """A reference row that decodes whole turns by other means (no tree, no verifier), timed like the
    methods, so tables can show how the harness's vanilla loop compares with a library's own loop."""

    def propose(self, root: Tensor) -> DraftTree:
        raise TypeError(f"{self.name} decodes whole turns; it has no draft tree")

    @abstractmethod
    def generate_turn(self, prompt: Tensor, *, max_new_tokens: int, stop_ids: frozenset[int],
                      sampling: SamplingParams, rng: torch.Generator) -> Generation:
        """The turn's new tokens (cut after a stop token), one accepted token per target forward."""


def generate(target: Target, drafter: Drafter, verifier: Verifier, prompt: Tensor, *, max_new_tokens: int,
             stop_ids: frozenset[int], sampling: SamplingParams, rng: torch.Generator) -> Generation:
    """Decode one turn for prompt [T]; batch size 1. PromptTooLong when the prompt leaves no room."""
    if prompt.shape[-1] >= target.max_len:
        raise PromptTooLong(f"prompt of {prompt.shape[-1]} tokens does not fit max_len {target.max_len}")
    if isinstance(drafter, WholeTurnBaseline):
        return drafter.generate_turn(prompt, max_new_tokens=max_new_tokens, stop_ids=stop_ids, sampling=sampling,
                                     rng=rng)
    sync = torch.cuda.synchronize if target.device.type == "cuda" else (lambda: None)
    gen = Generation()
    start = time.perf_counter()
    out = target.prefill(prompt)
    root = sample(to_probs(out.logits[-1], sampling), rng)
    drafter.start(prompt, out, sampling)
    sync()
    gen.prefill_time = time.perf_counter() - start
    done = gen.emit([root], stop_ids, max_new_tokens)
    while not done:
        t0 = time.perf_counter()
        tree = drafter.propose(torch.tensor(root))
        sync()
        t1 = time.perf_counter()
        try:
            out = target.score_tree(tree)
        except ContextFull:
            gen.stop_reason = "max_len"
            break
        verdict = verifier.verify(tree, out.logits, sampling, rng)
        target.commit(verdict.path)
        sync()
        t2 = time.perf_counter()
        drafter.accept(tree, verdict, out)
        sync()
        t3 = time.perf_counter()
        gen.draft_time += (t1 - t0) + (t3 - t2)
        gen.verify_time += t2 - t1
        gen.tree_sizes.append(tree.size)
        root = verdict.bonus
        done = gen.emit(tree.tokens[verdict.path[1:]].tolist() + [root], stop_ids, max_new_tokens)
    return gen
