"""Benchmark: the host-side cost of one decoding step, with the model's arithmetic taken away.

The target is rebuilt from its own config with the same layers and operators but a 64-wide hidden
state, a 1024-token vocabulary (the prompt's ids are folded into it) and random weights, so every
step issues the same operators as the real model while their arithmetic is negligible. What remains
per step is Python, the framework's dispatch and the harness's own work (tree building, masks,
verification, cache compaction): on a GPU, where a small target's step is launch-bound, that is
what bounds the speedup. Methods run with random
drafts (their trees have full size; accept lengths are meaningless here). Every figure comes from
one process, after a warm-up, per --compile mode given.

Usage: python benchmarks/step_overhead.py [--target smollm2-135m] [--methods vanilla,pld,eagle2]
       [--modes off,static] [--tokens 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from harness import chat, env
from harness.decode import generate
from harness.drafter import METHODS
from harness.sampling import SamplingParams
from harness.static_shapes import COMPILE_MODES
from harness.target import Target
from harness.verify import Verifier

PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle."


def hollow_target(real: Target, width: int, vocab: int, mode: str) -> Target:
    """The real target's architecture at hidden size ``width``: same operators, next to no arithmetic."""
    config = copy.deepcopy(real.config)
    heads = max(1, width // 16)
    config.hidden_size, config.intermediate_size, config.vocab_size = width, 2 * width, vocab
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, max(1, heads // 2), 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=real.dtype, attn_implementation="sdpa")
    target = Target(model.to(real.device).eval(), real.tokenizer, model_id=f"{real.model_id}-hollow",
                    max_len=real.max_len)
    target.compile_tree_forward(mode)
    return target


def measure(target: Target, method: str, prompt: torch.Tensor, tokens: int) -> dict:
    cls = METHODS.get(method)
    drafter = cls(target, checkpoint="random" if cls.needs_checkpoint else None)

    def run():
        return generate(target, drafter, Verifier(), prompt, max_new_tokens=tokens, stop_ids=frozenset(),
                        sampling=SamplingParams(), rng=torch.Generator().manual_seed(0))
    run()   # warm-up at full length: every shape the timed run needs
    start = time.perf_counter()
    gen = run()
    seconds = time.perf_counter() - start
    steps = len(gen.tree_sizes)
    return {"method": method, "steps": steps, "ms_per_step": round(1000 * seconds / (steps + 1), 3),
            "draft_ms": round(1000 * gen.draft_time / steps, 3), "verify_ms": round(1000 * gen.verify_time / steps, 3),
            "tree_nodes": round(sum(gen.tree_sizes) / steps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None)
    parser.add_argument("--methods", default="vanilla,pld,eagle2")
    parser.add_argument("--modes", default="off,static",
                        help=f"--compile modes to compare ({', '.join(COMPILE_MODES)})")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    real = Target.load(args.target)
    prompt = chat.render(real.tokenizer, [{"role": "user", "content": PROMPT}]) % args.vocab
    rows = []
    for mode in args.modes.split(","):
        target = hollow_target(real, args.width, args.vocab, mode)
        rows += [{"compile": mode, **measure(target, method, prompt, args.tokens)}
                 for method in args.methods.split(",")]
    table = pd.DataFrame(rows)
    print(f"{real.model_id} at hidden size {args.width}, vocabulary {args.vocab} "
          f"({real.config.num_hidden_layers} layers), {real.device}, "
          f"{torch.get_num_threads()} threads")
    print(table.to_string(index=False))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "width": args.width, "vocab": args.vocab, "tokens": args.tokens, "env": env.capture()}, handle, indent=2)


if __name__ == "__main__":
    main()
