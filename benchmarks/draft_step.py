"""Benchmark: where a CORAL draft step spends its time, with and without LM-head grouping.

One process, one real prompt, interleaved repetitions after a warm-up. For a tree level of ``top_k``
frontier nodes (and for the root's single node) it times separately:

- ``layer``: the draft network (fc + decoder layer) over the level's nodes, with its KV cache;
- ``head_full``: scoring the whole vocabulary (log-softmax + top-k), as EAGLE-2 / HASS / coral-fullhead;
- ``head_grouped``: the router plus scoring the always-on set and the ``top_groups`` chosen groups;
- ``propose_full`` / ``propose_grouped``: a whole tree proposal (root + every level + selection).

Usage: python benchmarks/draft_step.py [--target smollm2-135m] [--checkpoint DIR] [--top-groups 8]
       [--repeats 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from harness import chat, env
from harness.target import Target
from methods.coral import Coral
from methods.eagle2 import additive

PROMPT = "Explain how a refrigerator keeps food cold, step by step, for a curious ten-year-old."


def clock(fn, repeats: int) -> float:
    """Median milliseconds of fn() over repeats."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - start))
    return statistics.median(samples)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None)
    parser.add_argument("--checkpoint", default=None, help="a CORAL draft (default: the committed one)")
    parser.add_argument("--top-groups", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    target = Target.load(args.target)
    grouped = Coral(target, args.checkpoint, top_groups=args.top_groups)
    full, probe = (Coral(target, args.checkpoint, top_groups=0) for _ in range(2))
    full.net = probe.net = grouped.net
    prompt = chat.render(target.tokenizer, [{"role": "user", "content": PROMPT}])
    out = target.prefill(prompt)
    root = prompt[-1]
    for drafter in (grouped, full, probe):
        drafter.start(prompt, out, drafter.sampling)
        drafter.propose(root)                 # fills the draft cache with the prompt

    def propose(drafter: Coral) -> None:
        """One more proposal after a step that accepted only the root: the context grows by one token."""
        drafter.pending_tokens, drafter.pending_features = [], out.hidden[-1:]
        drafter.propose(root)

    k, device = grouped.options.top_k, target.device
    features = out.hidden[-k:]
    tokens = prompt[-k:].to(device)
    stable = probe.stable
    allowed = torch.cat([torch.ones(k, stable, dtype=torch.bool, device=device), torch.eye(k, dtype=torch.bool)], 1)
    mask = additive(allowed, target.dtype)
    positions = torch.full((1, k), stable, device=device)

    def layer() -> None:
        probe.net(target.embed(tokens)[None], features[None], positions, mask, probe.cache)
        probe.cache.keep(stable, torch.arange(0, device=device))

    cases = {
        "layer": layer,
        "head_full": lambda: full.top_tokens(features, k),
        "head_grouped": lambda: grouped.top_tokens(features, k),
        "root_head_full": lambda: full.top_tokens(features[:1], k),
        "root_head_grouped": lambda: grouped.top_tokens(features[:1], k),
        "propose_full": lambda: propose(full),
        "propose_grouped": lambda: propose(grouped),
    }
    for fn in cases.values():   # warm-up
        for _ in range(3):
            fn()
    # Interleaved rounds; the two proposers' contexts grow alike (one token per call).
    times = {name: [] for name in cases}
    rounds = 10
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(clock(fn, max(1, args.repeats // rounds)))
    ms = {name: round(statistics.median(samples), 3) for name, samples in times.items()}
    summary = {"top_groups": args.top_groups, "num_groups": grouped.net.num_groups, "always_on": grouped.net.always_on,
               "scored_tokens_grouped": sum(int(grouped.segments[s][0].shape[0]) for s in range(args.top_groups + 1)),
               "vocab": target.vocab_size, "top_k": k, "ms": ms,
               "head_speedup": round(ms["head_full"] / ms["head_grouped"], 2),
               "head_share_full": round(ms["head_full"] / (ms["head_full"] + ms["layer"]), 3),
               "head_share_grouped": round(ms["head_grouped"] / (ms["head_grouped"] + ms["layer"]), 3),
               "propose_speedup": round(ms["propose_full"] / ms["propose_grouped"], 2),
               "threads": torch.get_num_threads(), "env": env.capture()}
    for name, value in ms.items():
        print(f"{name:<18} {value:>9.3f} ms")
    print(f"LM head per level: {summary['head_speedup']}x faster with {args.top_groups}/{grouped.net.num_groups} groups "
          f"(+{grouped.net.always_on} always-on tokens); head share of a level {summary['head_share_full']:.0%} -> "
          f"{summary['head_share_grouped']:.0%}; whole proposal {summary['propose_speedup']}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
