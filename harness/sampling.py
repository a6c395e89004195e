"""Sampling parameters and the one function that turns logits into the distribution p.

Every draw in the harness goes through ``to_probs``: the target's distribution at each tree node, the
residuals after a rejection, the bonus token, and any drafter that samples. Using one function for
all of them is what rules out the EAGLE-2-era bug in which the bonus token was drawn from the raw
softmax while the other draws used temperature / top-p (docs/reference.md §2.7.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 means greedy (argmax)
    top_p: float = 1.0         # nucleus mass kept; 1 disables
    top_k: int = 0             # tokens kept; 0 disables

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top-k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def to_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """[..., V] logits -> [..., V] float32 probabilities after temperature, top-k and top-p.

    Greedy gives the one-hot of the argmax, so callers need no special case for T = 0.
    """
    logits = logits.float()
    if params.greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        sorted_probs = sorted_probs.masked_fill(mass_before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: Tensor, rng: torch.Generator) -> int:
    """One token id drawn from a [V] distribution with an explicit generator (reproducible runs).
    The generator is a CPU one on every device (draws depend on the seed and p alone), and CUDA's
    multinomial refuses a CPU generator, hence the copy of p to the host (one [V] row per draw)."""
    return int(torch.multinomial(probs.cpu(), 1, generator=rng))
