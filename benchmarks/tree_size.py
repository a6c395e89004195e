"""Benchmark: pick the draft-tree size for this device from measurements, not from a GPU paper's default.

Two measurements in one process, after a warm-up:

1. the target's verify forward time against the number of tree nodes (a chain of N nodes after a real
   prompt, cache restored after each), next to the one-token step and, given ``--bandwidth-gbs``, the
   memory-bandwidth floor of a step (weight bytes / bandwidth);
2. a tree drafter (``--method``, EAGLE-2 by default) decoding the same prompts at several
   ``total_tokens``, with vanilla decoding beside it: tau (pooled), tokens/s and the ratio to vanilla.
   The recommended size is the one with the highest measured tokens/s.

With ``--compile MODE`` both are measured with fixed-shape, compiled tree forwards (trees padded to a
power of two; ``reduce-overhead`` records CUDA graphs on a GPU), as ``harness run --compile`` runs them.

Usage: python benchmarks/tree_size.py [--method eagle2] [--checkpoint DIR] [--sizes 1,8,16,32,60,96]
       [--totals 10,20,30,60] [--tokens 64] [--bandwidth-gbs 3350] [--compile reduce-overhead] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import pandas as pd
import torch

from harness import chat, env
from harness.decode import generate
from harness.drafter import METHODS
from harness.sampling import SamplingParams
from harness.static_shapes import COMPILE_MODES
from harness.target import Target
from harness.tree import DraftTree
from harness.verify import Verifier

PROMPTS = [
    "Explain how a refrigerator keeps food cold, step by step.",
    "Write a short story about a robot that learns to paint.",
    "A shop sells pens at 3 dollars each and notebooks at 5 dollars each. Tom buys 4 pens and 2 notebooks. "
    "How much does he pay? Explain your reasoning.",
]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


@torch.no_grad()
def forward_times(target: Target, prompt: torch.Tensor, sizes: list[int], repeats: int) -> list[dict]:
    sync = torch.cuda.synchronize if target.device.type == "cuda" else (lambda: None)
    target.reset()
    target.prefill(prompt)
    rows = []
    for n in sizes:
        tree = DraftTree(tokens=prompt[-1:].repeat(n), parents=torch.arange(-1, n - 1))
        samples = []
        for i in range(repeats + 3):
            sync()
            start = time.perf_counter()
            target.score_tree(tree)
            target.commit(torch.arange(0))   # drop the tree's entries: the next repeat sees the same context
            sync()
            if i >= 3:                      # warm-up forwards per size (compiling and recording graphs)
                samples.append(1000 * (time.perf_counter() - start))
        rows.append({"tree_nodes": n, "forward_ms": round(statistics.median(samples), 3)})
    base = rows[0]["forward_ms"]
    for row in rows:
        row["vs_one_token"] = round(row["forward_ms"] / base, 2)
    return rows


def decode_rate(target: Target, drafter, prompts: list[torch.Tensor], tokens: int) -> dict:
    sync = torch.cuda.synchronize if target.device.type == "cuda" else (lambda: None)
    generated, steps, seconds = 0, 0, 0.0
    for prompt in prompts:
        sync()
        start = time.perf_counter()
        gen = generate(target, drafter, Verifier(), prompt, max_new_tokens=tokens, stop_ids=frozenset(),
                       sampling=SamplingParams(), rng=torch.Generator())
        sync()
        seconds += time.perf_counter() - start
        generated += len(gen.tokens)
        steps += len(gen.accept_lengths)
    return {"tau_pooled": round(generated / steps, 3), "tokens_per_s": round(generated / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None)
    parser.add_argument("--method", default="eagle2")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--sizes", type=_ints, default=_ints("1,2,4,8,16,24,32,48,60,80,96,128"))
    parser.add_argument("--totals", type=_ints, default=_ints("10,20,30,45,60"))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="device memory bandwidth, for the floor")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="off")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    target = Target.load(args.target)
    target.compile_tree_forward(args.compile)
    prompts = [chat.render(target.tokenizer, [{"role": "user", "content": text}]) for text in PROMPTS]

    forwards = forward_times(target, prompts[0], args.sizes, args.repeats)
    weight_bytes = sum(p.numel() * p.element_size() for p in target.model.parameters())
    floor_ms = 1000 * weight_bytes / (args.bandwidth_gbs * 1e9) if args.bandwidth_gbs else None

    vanilla = METHODS.get("vanilla")(target)
    decode_rate(target, vanilla, prompts[:1], args.tokens)   # warm-up, at full length for compiled shapes
    rows = [{"method": "vanilla", "total_tokens": 1, **decode_rate(target, vanilla, prompts, args.tokens)}]
    for total in args.totals:
        drafter = METHODS.get(args.method)(target, args.checkpoint, total_tokens=total)
        decode_rate(target, drafter, prompts[:1], args.tokens)
        rows.append({"method": args.method, "total_tokens": total,
                     **decode_rate(target, drafter, prompts, args.tokens)})
    for row in rows:
        row["speedup_vs_vanilla"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 3)
    best = max(rows[1:], key=lambda row: row["tokens_per_s"])

    print(pd.DataFrame(forwards).to_string(index=False))
    print(f"weights {weight_bytes / 2**20:.1f} MiB" + (f"; bandwidth floor of one step {floor_ms:.3f} ms "
                                                       f"(one-token step measured {forwards[0]['forward_ms']} ms)"
                                                       if floor_ms else ""))
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"recommended: --opt {args.method}.total_tokens={best['total_tokens']} "
          f"({best['tokens_per_s']} tok/s, x{best['speedup_vs_vanilla']} vs vanilla on this device)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"forward": forwards, "decode": rows, "recommended_total_tokens": best["total_tokens"],
                       "weight_bytes": weight_bytes, "bandwidth_floor_ms": floor_ms, "tokens": args.tokens,
                       "threads": torch.get_num_threads(), "compile": args.compile, "env": env.capture()}, handle, indent=2)


if __name__ == "__main__":
    main()
