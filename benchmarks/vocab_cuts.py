"""How much of a draft's T = 0 acceptance an EAGLE-3 draft vocabulary would forbid, read from a replay.

At T = 0 every committed token is vanilla's, and a step's accept length a says that the first a - 1 of the
step's tokens were drafted and accepted (the last is the target's own). A drafter restricted to an EAGLE-3
draft's vocabulary (its `t2d`) cannot draft a token outside it, so each step whose accepted run holds such a
token would have ended there: about one step more per such step. Set beside the extra steps another cell
took on the same answers, this estimates the share of a tau gap that the vocabulary explains (not exact:
later steps of the restricted drafter would start from other positions).

Usage: python benchmarks/vocab_cuts.py RUN METHOD CHECKPOINT [--other METHOD]
       python benchmarks/vocab_cuts.py RUN METHOD --vocab-size N --data DATAGEN_DIR [--max-samples N]
  e.g. python benchmarks/vocab_cuts.py results/smollm2-epoch2-t0 hass-replay \
           checkpoints/smollm2-135m/second-pass/eagle3 --other eagle3-replay
The second form asks what a vocabulary of N tokens would forbid, built as `harness train --method eagle3`
builds it (the N most frequent answer tokens of the datagen folder), before training a draft over it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable

import torch

from harness.suite import read_jsonl
from harness.target import Target
from harness.train.data import FeatureData
from harness.train.trainer import PRESETS
from methods._eagle3_train import draft_vocabulary
from methods.eagle3 import Eagle3


def outside_vocab(checkpoint: Path, run: Path) -> torch.Tensor:
    """Target ids outside the draft's vocabulary, read by the method's own checkpoint reader (either layout),
    which refuses a draft made for another target than the run's."""
    target = Target.load(json.loads((run / "manifest.json").read_text())["settings"]["target"])
    tensors, _ = Eagle3.read_checkpoint(checkpoint, target, ())
    return ~tensors["t2d"].bool()


def outside_top(data: Path, size: int, max_samples: int | None, max_len: int, run: Path) -> torch.Tensor:
    """Target ids outside the ``size`` most frequent answer tokens of a datagen folder."""
    answers = FeatureData(data, max_len, max_samples, fields=("ids", "loss_mask"))   # not the features
    vocab_size = Target.load(json.loads((run / "manifest.json").read_text())["settings"]["target"]).vocab_size
    outside = torch.ones(vocab_size, dtype=torch.bool)
    outside[draft_vocabulary(answers, size, vocab_size)] = False
    return outside


def step_counts(rows: Iterable[dict], outside: torch.Tensor) -> tuple[int, int, float]:
    """(steps, steps whose accepted draft holds a token outside the vocabulary, share of the answers' tokens
    outside it) over every turn."""
    steps = cut = tokens = forbidden_tokens = 0
    for row in rows:
        choice = row["choices"][0]
        lengths = iter(choice["accept_lengths"])
        for ids, n_steps in zip(row["token_ids"], choice["decoding_steps"]):
            forbidden, position = outside[torch.tensor(ids, dtype=torch.long)].tolist(), 0
            tokens += len(forbidden)
            forbidden_tokens += sum(forbidden)
            for _ in range(n_steps):
                accepted = next(lengths)
                cut += any(forbidden[position:position + accepted - 1])
                position += accepted
            steps += n_steps
    return steps, cut, forbidden_tokens / max(tokens, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("method")
    parser.add_argument("checkpoint", type=Path, nargs="?", help="an eagle3 draft folder (its t2d)")
    parser.add_argument("--vocab-size", type=int, help="instead of a checkpoint: the N most frequent tokens of --data")
    parser.add_argument("--data", type=Path, help="the datagen folder --vocab-size counts tokens in")
    parser.add_argument("--max-samples", type=int, help="only its first N samples (train's max_samples)")
    parser.add_argument("--max-len", type=int, default=PRESETS["cpu"].max_len,
                        help="tokens kept per sample (train's max_len; default: the cpu preset's)")
    parser.add_argument("--other", help="a cell to count extra steps against (e.g. the eagle3 draft's own)")
    args = parser.parse_args()
    if (args.checkpoint is None) == (args.vocab_size is None) or (args.vocab_size is None) != (args.data is None):
        parser.error("give either CHECKPOINT or both --vocab-size and --data")
    outside = (outside_vocab(args.checkpoint, args.run) if args.checkpoint is not None
               else outside_top(args.data, args.vocab_size, args.max_samples, args.max_len, args.run))
    for path in sorted(args.run.glob(f"answers/*/{args.method}-temperature-0.jsonl")):
        steps, cut, share = step_counts(read_jsonl(path), outside)
        line = (f"{path.parent.name:<14} {share:.1%} of answer tokens outside V_d; {args.method}: {steps} steps, "
                f"{cut} with an accepted token outside V_d")
        other = path.with_name(f"{args.other}-temperature-0.jsonl") if args.other else None
        if other is not None and other.exists():
            line += f"; {args.other} took {step_counts(read_jsonl(other), outside)[0] - steps:+d} steps"
        print(line)


if __name__ == "__main__":
    main()
