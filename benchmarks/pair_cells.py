"""Paired tau difference between two cells kept in different run folders (e.g. two replays of one sweep with
different method options, which a run folder refuses to hold together), per suite and temperature; with
``--minus``, the change of that difference against a second pair (a difference of differences).

The same estimator as the report's "Paired comparisons" (harness.metrics.paired_difference: pooled tau and
per-question tau, paired percentile bootstrap over the questions both answered, 10,000 resamples, seed 0).
``--minus C METHOD_C D METHOD_D`` gives [tau(A) - tau(B)] - [tau(C) - tau(D)] (harness.metrics.paired_contrast:
pooled tau, one bootstrap resample of the questions all four cells answered), e.g. whether a margin between two
drafts grew from one training budget to the next.

Usage: python benchmarks/pair_cells.py RUN_A METHOD_A RUN_B METHOD_B [--minus RUN_C METHOD_C RUN_D METHOD_D]
  e.g. python benchmarks/pair_cells.py results/smollm2-eagle3-tree-sweep/eagle3-d7t100 eagle3-replay \
           results/smollm2-eagle3-tree-sweep/hass-d7t100 hass-replay
       python benchmarks/pair_cells.py results/smollm2-epoch7-eq-t0 fspad-replay results/smollm2-epoch7-eq-t0 \
           eagle2-replay --minus results/smollm2-epoch6-eq-t0 fspad-replay results/smollm2-epoch6-eq-t0 eagle2-replay
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from harness.metrics import load_frame, paired_contrast, paired_difference


def cell(run: Path, method: str) -> pd.DataFrame:
    frame = load_frame(sorted(run.glob(f"answers/*/{method}-temperature-*.jsonl")))
    if frame.empty:
        raise SystemExit(f"{run}: no rows of {method}")
    return frame[frame.skipped == ""]


def same_cell(frame: pd.DataFrame, suite: str, temperature: float) -> pd.DataFrame:
    return frame[(frame.suite == suite) & (frame.temperature == temperature)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("method_a")
    parser.add_argument("run_b", type=Path)
    parser.add_argument("method_b")
    parser.add_argument("--minus", nargs=4, metavar=("RUN_C", "METHOD_C", "RUN_D", "METHOD_D"),
                        help="subtract tau(C) - tau(D), paired over the questions all four cells answered")
    args = parser.parse_args()
    a, b = cell(args.run_a, args.method_a), cell(args.run_b, args.method_b)
    if args.minus:
        c, d = cell(Path(args.minus[0]), args.minus[1]), cell(Path(args.minus[2]), args.minus[3])
        what = (f"[tau({args.method_a}) - tau({args.method_b})] - "
                f"[tau({args.minus[1]}) - tau({args.minus[3]})] of {args.minus[0]} / {args.minus[2]}")
    else:
        what = f"tau({args.method_a}) - tau({args.method_b})"
    print(f"{'suite':<10} {'T':>4} {'questions':>9}  {what} [95%]  verdict")
    for (suite, temperature), mine in a.groupby(["suite", "temperature"]):
        theirs = same_cell(b, suite, temperature)
        if args.minus:
            diff = paired_contrast([mine, theirs, same_cell(c, suite, temperature), same_cell(d, suite, temperature)],
                                   [1.0, -1.0, -1.0, 1.0])
            keys = ("contrast", "lo", "hi", "verdict")
        else:
            diff = paired_difference(mine, theirs)
            keys = ("tau_diff", "tau_lo", "tau_hi", "tau_verdict")
        if diff["questions"]:
            value, low, high, verdict = (diff[key] for key in keys)
            print(f"{suite:<10} {temperature:>4g} {diff['questions']:>9}  {value:+.3f} "
                  f"[{low:+.3f}, {high:+.3f}]  {verdict}")


if __name__ == "__main__":
    main()
