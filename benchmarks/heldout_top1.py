"""Held-out top-1 of a trained draft, exactly as `harness train` evaluates it, without training.

Builds the method's training net on DATA with the given loss options, warm-starts it from CHECKPOINT (so
a draft can be read into another draft vocabulary: `--loss draft_vocab=16384` for an EAGLE-3 draft) and
evaluates the trainer's held-out split (same `holdout`, `seed`, `holdout_from` and `max_samples` as the
training run, via `--set`) at `eval_depths` depths. One thread unless OMP_NUM_THREADS says otherwise.
For checkpoints as they were trained, `python -m harness heldout` reads the split from their records and adds
intervals and paired differences; this script is for a draft carried into another network first.

Usage: python benchmarks/heldout_top1.py --method eagle3 --checkpoint DIR --data DIR [--loss k=v ...]
       [--set holdout_from=1024 --set max_samples=2624 ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from harness.cli import _key_value, _key_values
from harness.learned import learned
from harness.target import Target
from harness.train import trainer
from harness.train.data import FeatureData


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--target", default=None)
    parser.add_argument("--loss", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    method = learned(args.method, "evaluate")
    config = dataclasses.replace(trainer.PRESETS["cpu"], **_key_values(args.set, trainer.TrainConfig))
    target = Target.load(args.target, dtype="float32", device="cpu")
    data = FeatureData(args.data, max_len=config.max_len, max_samples=config.max_samples)
    torch.manual_seed(config.seed)
    loss = dict(_key_value(pair) for pair in args.loss)
    net, objective = method.training_setup(target, data, **loss)
    method.warm_start(net, target, args.checkpoint, **loss)
    _, held_out = data.split(config.holdout, config.seed, config.holdout_from, config.holdout_of)
    started = time.perf_counter()
    result = trainer._evaluate(objective, net, data, held_out, config, target.device)
    print(json.dumps({"checkpoint": str(args.checkpoint), "held_out_samples": len(held_out),
                      "seconds": round(time.perf_counter() - started, 1),
                      **{key: round(value, 4) for key, value in result.items()}}))


if __name__ == "__main__":
    main()
