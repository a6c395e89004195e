"""transformers ``model.generate`` as a reference row: the target decoding with the library's own loop.

Not a drafting method but a TurnDecoder of its own (harness/decode.py): no tree, no verifier. It shows where the harness's vanilla loop (the speedup denominator) stands
against the loop most users know, measured in the same run on the same stack. Greedy output equals
vanilla's; sampled output follows the same distribution but draws from torch's global generator
(seeded from the turn's seed), so sampled text differs from vanilla's draw for draw.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationConfig

from harness.decode import Generation, TurnDecoder, check_prompt_fits
from harness.drafter import METHODS
from harness.method import Method
from harness.errors import UserError
from harness.sampling import SamplingParams

CACHES = ("dynamic", "static")


@dataclass(frozen=True)
class HFGenerateOptions:
    cache: str = "dynamic"   # transformers cache_implementation: dynamic, or static (what its compile path uses)


@METHODS.register("hf-generate", "transformers-generate")
class HFGenerate(Method, TurnDecoder):
    summary = "reference: transformers model.generate on the same target (not a drafting method)"
    Options = HFGenerateOptions
    lossless = True   # the target's own decoding: greedy text equals vanilla's, sampled text its distribution

    def __init__(self, target, checkpoint: str | None = None, **options) -> None:
        super().__init__(target, checkpoint, **options)
        if self.options.cache not in CACHES:
            raise UserError(f"hf-generate.cache must be one of {', '.join(CACHES)}, got {self.options.cache!r}")
        self.method = self

    def turn_decoder(self) -> TurnDecoder:
        return self

    @torch.no_grad()
    def decode_turn(self, prompt: Tensor, *, max_new_tokens: int, stop_ids: frozenset[int],
                    sampling: SamplingParams, rng: torch.Generator) -> Generation:
        """The whole turn in one model.generate call, booked as verify time (one accepted token per forward)."""
        check_prompt_fits(self.target, prompt)
        model, device = self.target.model, self.target.device
        draw = {} if sampling.greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                           "top_k": sampling.top_k}
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not sampling.greedy, **draw,
            eos_token_id=sorted(stop_ids) or None, pad_token_id=min(stop_ids) if stop_ids else 0,
            cache_implementation=None if self.options.cache == "dynamic" else self.options.cache)
        torch.manual_seed(rng.initial_seed())
        ids = prompt.to(device).reshape(1, -1)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        if device.type == "cuda":
            torch.cuda.synchronize()
        gen = Generation(verify_time=time.perf_counter() - start)
        gen.emit(out[0, ids.shape[1]:].tolist(), stop_ids, max_new_tokens)
        gen.accept_lengths = [1] * len(gen.tokens)
        gen.tree_sizes = [1] * max(len(gen.tokens) - 1, 0)
        return gen
