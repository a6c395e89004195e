"""``python -m harness heldout``: trained drafts measured on one held-out set, sample by sample, with intervals.

The trainer logs one pooled top-1 per evaluation and no interval, so its logs cannot say whether a pass
still improved a draft or whether one draft is above another. This command evaluates each checkpoint on
the held-out samples its training record names (one split for all of them, refused otherwise), keeps the
hits and positions of every sample at every depth, and reports the pooled top-1 (hits over positions) with
a 95% percentile bootstrap interval over samples. Each checkpoint after the first is paired with the one
listed before it (or, with ``--versus first``, with the first one): the difference, its paired interval (the
same resampled samples on both sides) and a verdict. Listing a draft's passes in training order answers "has
it stopped improving?": a last gain above zero means it has not reached a plateau.

The weights are the saved ones (bf16), as drafting uses them. The trainer evaluated its fp32 weights in
batches, so its logged figure can differ from this one in the third decimal.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

import pandas as pd
import torch

from harness import metrics
from harness.errors import UserError
from harness.learned import learned
from harness.report.curves import held_out_split, read_config
from harness.report.render import markdown_table
from harness.report.tables import Table, interval
from harness.target import Target
from harness.train.data import FeatureData
from harness.train.trainer import TrainConfig


def held_out_samples(configs: list[dict], directories: list[Path], data_dir: Path | None,
                     split: str = "held-out") -> tuple[FeatureData, list[int]]:
    """The data folder and held-out sample indices every checkpoint was measured on; a clear error when the
    checkpoints' training records name different splits. ``split="train"`` draws as many of the samples they
    trained on instead (seeded, sorted, from the held-out samples' index range): top-1 there minus top-1 held
    out is the generalization gap, which says whether a draft still improving is short of capacity and steps
    (no gap) or starting to memorize."""
    splits = {held_out_split(config) for config in configs}
    if len(splits) != 1:
        detail = "; ".join(f"{d}: {held_out_split(c)}" for d, c in zip(directories, configs))
        raise UserError(f"the checkpoints were evaluated on different held-out splits, so their top-1 do not "
                        f"pair ((share, seed, holdout_from, pool, max_len): {detail})")
    training = configs[0].get("training") or {}
    recorded = training.get("config") or {}   # older records lack later settings: those take today's defaults
    settings = TrainConfig(**{f.name: recorded[f.name] for f in dataclasses.fields(TrainConfig) if f.name in recorded})
    folder = data_dir or (Path(training["data"]) if training.get("data") else None)
    if folder is None:
        raise UserError(f"{directories[0]} records no data folder: pass --data DIR")
    # The held-out samples are drawn among the first ``holdout_of`` samples when it is set: only those are read.
    data = FeatureData(folder, max_len=settings.max_len, max_samples=settings.holdout_of or settings.max_samples)
    trained, held_out = data.split(settings.holdout, settings.seed, settings.holdout_from, settings.holdout_of)
    if split == "train":   # from the index range the held-out samples were drawn in: the same mix of sources
        pool = settings.holdout_of or len(data.samples)
        candidates = [i for i in trained if settings.holdout_from <= i < pool]
        return data, sorted(random.Random(settings.seed).sample(candidates, min(len(held_out), len(candidates))))
    return data, held_out


def evaluate(directory: Path, config: dict, target: Target, data: FeatureData, held_out: list[int],
             depths: int) -> pd.DataFrame:
    """Hits and positions of ``directory``'s draft on each held-out sample at depths 1..``depths``
    (columns sample, depth, hits, positions), through the method's own training objective."""
    method = learned(config.get("method", "?"), "evaluate")
    net, _ = method.load(target, str(directory))
    _, objective = method.training_setup(target, data, **(config.get("loss") or {}))
    rows = []
    with torch.no_grad():
        for sample in held_out:
            measured = objective.evaluate(net, data.collate([sample], target.device), depths)
            for key, (hits, positions) in measured.items():
                depth = key.removeprefix("top1_depth")   # other figures (CORAL's router recall) are skipped
                if depth.isdigit() and int(depth) <= depths:
                    rows.append({"sample": sample, "depth": int(depth), "hits": int(hits), "positions": int(positions)})
    return pd.DataFrame(rows)


def as_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """One depth's per-sample rows in the shape metrics' pooled-ratio bootstrap reads (a top-1 is a pooled
    ratio, hits over positions, as tau is accepted tokens over steps)."""
    return pd.DataFrame({"question_id": frame["sample"].astype(str), "accepted": frame["hits"],
                         "steps": frame["positions"]})


def compare(measured: list[tuple[str, pd.DataFrame]], versus: str = "previous") -> pd.DataFrame:
    """Per checkpoint and depth: pooled top-1 with its bootstrap interval, and the paired difference (interval
    and verdict) from the checkpoint listed before it (``versus="previous"``: a draft's passes) or from the
    first one listed (``"first"``: other drafts against one reference)."""
    rows, previous = [], None
    for label, frame in measured:
        for depth, part in frame.groupby("depth"):
            low, high = metrics.ratio_interval(part.hits, part.positions, resamples=metrics.PAIRED_RESAMPLES)
            row = {"checkpoint": label, "depth": int(depth), "samples": len(part),
                   "top1": part.hits.sum() / max(part.positions.sum(), 1), "lo": low, "hi": high}
            if previous is not None and depth in previous.depth.values:
                before = previous[previous.depth == depth]
                pair = metrics.paired_contrast([as_cell(part), as_cell(before)], [1.0, -1.0])
                row.update(gain=pair["contrast"], gain_lo=pair["lo"], gain_hi=pair["hi"], verdict=pair["verdict"])
            rows.append(row)
        if versus == "previous" or previous is None:
            previous = frame
    return pd.DataFrame(rows)


def table(results: pd.DataFrame, versus: str, split: str = "held-out") -> Table:
    rows = []
    for row in results.itertuples():
        gain = "" if pd.isna(getattr(row, "gain", float("nan"))) else \
            f"{interval(row.gain, row.gain_lo, row.gain_hi, 3)} {row.verdict}"
        rows.append([row.checkpoint, str(row.depth), str(row.samples), interval(row.top1, row.lo, row.hi, 3), gain])
    against = "the checkpoint listed before it" if versus == "previous" else "the first checkpoint"
    columns = ["checkpoint", "depth", "samples", "top-1 [95% CI]", f"minus {against} [paired 95% CI]"]
    measured_on = "Held-out" if split == "held-out" else "Training-sample"
    return Table("heldout", f"{measured_on} top-1 against the target's greedy token",
                 f"Pooled over positions; percentile bootstrap over {split} samples (10,000 resamples); verdict: the "
                 "paired interval above zero, below it, or not distinguishable.", pd.DataFrame(rows, columns=columns))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", type=Path, nargs="+",
                        help="checkpoint folders written by `harness train`, in the order to pair them")
    parser.add_argument("--data", type=Path, default=None, help="the datagen folder (default: the one the first "
                        "checkpoint trained on)")
    parser.add_argument("--versus", choices=("previous", "first"), default="previous",
                        help="pair each checkpoint with the one listed before it (a draft's passes, in order) or "
                             "with the first one listed (drafts against a reference)")
    parser.add_argument("--split", choices=("held-out", "train"), default="held-out",
                        help="measure on the held-out samples, or on as many of the samples the drafts trained on "
                             "(their top-1 minus the held-out one is the generalization gap)")
    parser.add_argument("--depths", type=int, default=3, help="tree depths to measure (default 3)")
    parser.add_argument("--target", default=None, help="the target (default: the embedded SmolLM2)")
    parser.add_argument("--out", type=Path, default=Path("reports/heldout"),
                        help="folder for heldout.md and the per-sample heldout.csv")


def run(args: argparse.Namespace) -> None:
    configs = [read_config(directory) for directory in args.checkpoints]
    data, held_out = held_out_samples(configs, args.checkpoints, args.data, args.split)
    target = Target.load(args.target, dtype="float32")
    measured = [(str(d), evaluate(d, c, target, data, held_out, args.depths)) for d, c in zip(args.checkpoints, configs)]
    results = compare(measured, args.versus)
    args.out.mkdir(parents=True, exist_ok=True)
    pd.concat([frame.assign(checkpoint=label) for label, frame in measured]).to_csv(args.out / "heldout.csv", index=False)
    text = markdown_table(table(results, args.versus, args.split))
    samples = "held-out samples" if args.split == "held-out" else "samples they trained on"
    (args.out / "heldout.md").write_text(f"# Top-1 of {len(measured)} checkpoints on {len(held_out)} {samples} "
                                         f"of {data.directory}\n\n{text}\n")
    print(text)
