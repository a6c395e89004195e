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

from harness.metrics import pooled_contrast
from harness.report.render import markdown_table
from harness.report.tables import Table, interval
from harness.train.heldout import as_cell

RESAMPLES = 10_000


def cells(frame: pd.DataFrame, depth: int, checkpoints: list[str]) -> list[pd.DataFrame]:
    """Each checkpoint's rows at ``depth``, in one sample order, in the shape metrics' pooled-ratio bootstrap reads."""
    part = frame[frame.depth == depth].sort_values("sample")
    return [as_cell(part[part.checkpoint == checkpoint]) for checkpoint in checkpoints]


def gaps(trained: pd.DataFrame, held_out: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per checkpoint (in the training file's order) and depth: both top-1, the gap and its change, with intervals."""
    checkpoints = [c for c in dict.fromkeys(trained.checkpoint) if c in set(held_out.checkpoint)]
    rng, rows = np.random.default_rng(seed), []
    for depth in sorted(set(trained.depth) & set(held_out.depth)):
        sides = [cells(frame, depth, checkpoints) for frame in (trained, held_out)]
        picks = [rng.integers(0, len(side[0]), size=(RESAMPLES, len(side[0]))) for side in sides]
        for k, checkpoint in enumerate(checkpoints):
            (train, train_resampled), (held, held_resampled) = (pooled_contrast([side[k]], [1.0], p)
                                                                for side, p in zip(sides, picks))
            row = {"checkpoint": checkpoint, "depth": depth, "train": train, "held_out": held, "gap": train - held,
                   "gap_ci": np.percentile(train_resampled - held_resampled, [2.5, 97.5])}
            if k:
                (train_gain, train_resampled), (held_gain, held_resampled) = (
                    pooled_contrast([side[k], side[k - 1]], [1.0, -1.0], p) for side, p in zip(sides, picks))
                row.update(change=train_gain - held_gain,
                           change_ci=np.percentile(train_resampled - held_resampled, [2.5, 97.5]))
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
