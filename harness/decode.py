"""What the runner times for one turn (TurnDecoder), and the loop every drafting method shares.

``generate`` is that loop: prefill, then draft, verify, commit, accept. It knows no method, no suite
and no text: token ids in, token ids, acceptance lengths and stage times out. The prefill forward
counts as a step that emits one token (the first root), so for every method sum(accept_lengths) ==
len(tokens) and vanilla's accept_lengths are all 1. ``Speculative`` joins a drafter to it; a reference
row that decodes whole turns by other means (a library's own generate) is a TurnDecoder of its own.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from harness.errors import UserError
from harness.sampling import SamplingParams, sample, to_probs
from harness.target import ContextFull, Target
from harness.verify import Verifier

if TYPE_CHECKING:
    from harness.drafter import Drafter
    from harness.method import Method


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


class TurnDecoder(ABC):
    """One method's way of answering a turn, as the runner times it. It alone says whether its output
    is the target's own (``lossless``), which labels every row it makes."""

    method: Method   # the registered method it decodes for: name, settings, checkpoint

    @property
    @abstractmethod
    def lossless(self) -> bool:
        """False when the output distribution may differ from the target's (a lossy acceptance rule)."""

    @abstractmethod
    def decode_turn(self, prompt: Tensor, *, max_new_tokens: int, stop_ids: frozenset[int],
                    sampling: SamplingParams, rng: torch.Generator) -> Generation:
        """The turn's new tokens for prompt [T] (cut after a stop token); PromptTooLong when it does not fit."""


class Speculative(TurnDecoder):
    """A drafter in the shared loop, checked by its own acceptance rule (whose ``lossless`` it reports)."""

    def __init__(self, drafter: Drafter) -> None:
        self.method = self.drafter = drafter
        self.verifier = drafter.verifier()

    @property
    def lossless(self) -> bool:
        return self.verifier.lossless

    def decode_turn(self, prompt: Tensor, *, max_new_tokens: int, stop_ids: frozenset[int],
                    sampling: SamplingParams, rng: torch.Generator) -> Generation:
        return generate(self.drafter.target, self.drafter, self.verifier, prompt, max_new_tokens=max_new_tokens,
                        stop_ids=stop_ids, sampling=sampling, rng=rng)


def check_prompt_fits(target: Target, prompt: Tensor) -> None:
    """PromptTooLong when a prompt of [T] tokens leaves no room in the target's context."""
    if prompt.shape[-1] >= target.max_len:
        raise PromptTooLong(f"prompt of {prompt.shape[-1]} tokens does not fit max_len {target.max_len}")


def generate(target: Target, drafter: Drafter, verifier: Verifier, prompt: Tensor, *, max_new_tokens: int,
             stop_ids: frozenset[int], sampling: SamplingParams, rng: torch.Generator) -> Generation:
    """Decode one turn for prompt [T]; batch size 1. PromptTooLong when the prompt leaves no room."""
    check_prompt_fits(target, prompt)
    target.use_taps(drafter.taps)
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
