"""Benchmark: the harness's per-step overhead, vanilla vs transformers.generate, and method speedups.

All figures come from one process, interleaved repetitions after a warm-up, the same prompt and the
same number of generated tokens (stop tokens ignored), so the ratios compare like with like:

- ``hf_generate``: transformers ``model.generate`` (greedy, its own DynamicCache);
- ``raw_loop``: the least a Python loop can do: one HF forward per token with a DynamicCache;
- ``vanilla``: the harness's baseline through Target, DraftTree, Verifier and the decode loop;
- every other method given with --methods, through the same loop;
- with ``--compile MODE``: vanilla and every method again, their tree forwards in fixed shapes
  compiled with torch.compile(mode=MODE) (``reduce-overhead`` records CUDA graphs on a GPU), on a
  second Target over the same weights, so eager and compiled rows share one process and one warm-up.

Usage: python benchmarks/decode_overhead.py [--target smollm2-135m] [--tokens 128] [--repeats 3]
       [--methods pld,eagle2] [--compile reduce-overhead] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers.cache_utils import DynamicCache

from harness import chat, env
from harness.decode import generate
from harness.drafter import METHODS
from harness.kvcache import cache_keyword
from harness.sampling import SamplingParams
from harness.static_shapes import COMPILE_MODES
from harness.target import Target
from harness.verify import Verifier

PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle."


def hf_generate(target: Target, prompt: torch.Tensor, tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    with torch.no_grad():
        target.model.generate(prompt[None], max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return time.perf_counter() - start, tokens


@torch.no_grad()
def raw_loop(target: Target, prompt: torch.Tensor, tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    cache = {cache_keyword(target.model.forward): DynamicCache(config=target.model.config)}
    logits = target.model(prompt[None], use_cache=True, **cache).logits
    for _ in range(tokens - 1):
        logits = target.model(logits[:, -1:].argmax(-1), use_cache=True, **cache).logits
    return time.perf_counter() - start, tokens


def harness_method(name: str, target: Target, checkpoint: str | None):
    drafter = METHODS.get(name)(target, checkpoint)

    def run(target: Target, prompt: torch.Tensor, tokens: int) -> tuple[float, int]:
        start = time.perf_counter()
        gen = generate(target, drafter, Verifier(), prompt, max_new_tokens=tokens, stop_ids=frozenset(),
                       sampling=SamplingParams(), rng=torch.Generator())
        return time.perf_counter() - start, len(gen.accept_lengths)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="pld")
    parser.add_argument("--checkpoint", action="append", default=[], help="method=path")
    parser.add_argument("--compile", choices=COMPILE_MODES[1:], default=None,
                        help="also run vanilla and the methods with fixed-shape, compiled tree forwards")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    target = Target.load(args.target)
    prompt = chat.render(target.tokenizer, [{"role": "user", "content": PROMPT}])
    checkpoints = dict(pair.split("=", 1) for pair in args.checkpoint)
    methods = ["vanilla", *filter(None, args.methods.split(","))]
    runners = {"hf_generate": (target, hf_generate), "raw_loop": (target, raw_loop)}
    runners.update({name: (target, harness_method(name, target, checkpoints.get(name))) for name in methods})
    if args.compile:
        fixed = Target(target.model, target.tokenizer, model_id=target.model_id, source=target.source,
                       max_len=target.max_len)
        fixed.compile_tree_forward(args.compile)
        runners.update({f"{name}+{args.compile}": (fixed, harness_method(name, fixed, checkpoints.get(name)))
                        for name in methods})
    for owner, run in runners.values():   # warm-up at full length: compiles every shape the timed runs use
        run(owner, prompt, args.tokens)
    times: dict[str, list[float]] = {name: [] for name in runners}
    forwards: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, (owner, run) in runners.items():
            seconds, steps = run(owner, prompt, args.tokens)
            times[name].append(seconds)
            forwards[name] = steps
    base = statistics.median(times["vanilla"])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rows.append({"runner": name, "median_s": round(median, 4), "tokens_per_s": round(args.tokens / median, 2),
                     "target_forwards": forwards[name], "ms_per_forward": round(1000 * median / forwards[name], 2),
                     "speedup_vs_vanilla": round(base / median, 3)})
    raw_step = statistics.median(times["raw_loop"]) / forwards["raw_loop"]
    van_step = base / forwards["vanilla"]
    summary = {"tokens": args.tokens, "repeats": args.repeats, "prompt_tokens": int(prompt.shape[0]), "rows": rows,
               "harness_overhead_ms_per_step": round(1000 * (van_step - raw_step), 2),
               "vanilla_over_hf_generate": round(statistics.median(times["hf_generate"]) / base, 3),
               "env": env.capture()}
    for row in rows:
        print(f"{row['runner']:<24} {row['tokens_per_s']:>8.2f} tok/s  {row['ms_per_forward']:>7.2f} ms/forward  "
              f"{row['target_forwards']:>4} forwards  x{row['speedup_vs_vanilla']:.2f} vs vanilla")
    print(f"harness overhead per step vs raw HF loop: {summary['harness_overhead_ms_per_step']} ms; "
          f"vanilla throughput / transformers.generate: {summary['vanilla_over_hf_generate']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
