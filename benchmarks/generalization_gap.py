"""Generalization gap of trained drafts: top-1 on samples they trained on minus top-1 held out, pass by pass.

Reads two per-sample files written by `harness heldout` for the same checkpoints, one run with `--split train`
and one on the held-out samples, and prints per checkpoint and depth the gap and its change from the
checkpoint listed before it, each with a 95% percentile bootstrap interval. Training and held-out samples are
resampled on their own (the gap itself is unpaired); each side's resample is the same for every checkpoint,
so the change of the gap is paired. A gap that widens pass after pass while the held-out gain shrinks is the
draft memorizing its training set, a sign that more data would help it more than more passes.

    python benchmarks/generalization_gap.py TRAIN/heldout.csv HELDOUT/heldout.csv [MORE/heldout.csv ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.render import markdown_table
from harness.report.tables import Table, interval

RESAMPLES = 10_000


def pooled_resamples(frame: pd.DataFrame, checkpoints: list[str], picks: np.ndarray) -> np.ndarray:
    """Pooled top-1 of each checkpoint (rows) in each resample (columns), the same samples for every checkpoint."""
    hits = frame.pivot(index="checkpoint", columns="sample", values="hits").loc[checkpoints].to_numpy(float)
    positions = frame.pivot(index="checkpoint", columns="sample", values="positions").loc[checkpoints].to_numpy(float)
    return np.stack([h[picks].sum(axis=1) / p[picks].sum(axis=1) for h, p in zip(hits, positions)])


def gaps(trained: pd.DataFrame, held_out: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per checkpoint (in the training file's order) and depth: both top-1, the gap and its change, with intervals."""
    checkpoints = [c for c in dict.fromkeys(trained.checkpoint) if c in set(held_out.checkpoint)]
    rng, rows = np.random.default_rng(seed), []
    for depth in sorted(set(trained.depth) & set(held_out.depth)):
        sides = [frame[(frame.depth == depth) & frame.checkpoint.isin(checkpoints)] for frame in (trained, held_out)]
        resampled = [pooled_resamples(side, checkpoints, rng.integers(0, side["sample"].nunique(),
                                                                       size=(RESAMPLES, side["sample"].nunique())))
                     for side in sides]
        gap = resampled[0] - resampled[1]
        for k, checkpoint in enumerate(checkpoints):
            top1 = [side[side.checkpoint == checkpoint] for side in sides]
            top1 = [part.hits.sum() / part.positions.sum() for part in top1]
            row = {"checkpoint": checkpoint, "depth": depth, "train": top1[0], "held_out": top1[1],
                   "gap": top1[0] - top1[1], "gap_ci": np.percentile(gap[k], [2.5, 97.5])}
            if k:
                change = gap[k] - gap[k - 1]
                row.update(change=row["gap"] - rows[-1]["gap"], change_ci=np.percentile(change, [2.5, 97.5]))
            rows.append(row)
    return pd.DataFrame(rows)


def table(results: pd.DataFrame) -> Table:
    rows = [[r.checkpoint, str(int(r.depth)), f"{r.train:.3f}", f"{r.held_out:.3f}", interval(r.gap, *r.gap_ci, 3),
             "" if pd.isna(getattr(r, "change", np.nan)) else interval(r.change, *r.change_ci, 3)]
            for r in results.itertuples()]
    columns = ["checkpoint", "depth", "trained-on top-1", "held-out top-1", "gap [95% CI]",
               "gap minus the row before [paired 95% CI]"]
    return Table("gap", "Generalization gap", "trained-on top-1 minus held-out top-1; 95% percentile bootstrap "
                 f"({RESAMPLES:,} resamples), trained-on and held-out samples resampled on their own",
                 pd.DataFrame(rows, columns=columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trained", type=Path, help="heldout.csv of `harness heldout --split train`")
    parser.add_argument("held_out", type=Path, nargs="+",
                        help="heldout.csv of `harness heldout` on the same checkpoints (several files are joined)")
    args = parser.parse_args()
    held_out = pd.concat(pd.read_csv(path) for path in args.held_out)
    results = gaps(pd.read_csv(args.trained), held_out.drop_duplicates(["checkpoint", "depth", "sample"]))
    if results.empty:
        raise SystemExit("no checkpoint appears in both files")
    print(markdown_table(table(results)))


if __name__ == "__main__":
    main()
