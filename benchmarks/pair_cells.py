"""Paired tau difference between two cells kept in different run folders (e.g. two replays of one sweep with
different method options, which a run folder refuses to hold together), per suite and temperature.

The same estimator as the report's "Paired comparisons" (harness.metrics.paired_difference: pooled tau and
per-question tau, paired percentile bootstrap over the questions both answered, 10,000 resamples, seed 0).

Usage: python benchmarks/pair_cells.py RUN_A METHOD_A RUN_B METHOD_B
  e.g. python benchmarks/pair_cells.py results/smollm2-eagle3-tree-sweep/eagle3-d7t100 eagle3-replay \
           results/smollm2-eagle3-tree-sweep/hass-d7t100 hass-replay
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from harness.metrics import load_frame, paired_difference


def cell(run: Path, method: str) -> pd.DataFrame:
    frame = load_frame(sorted(run.glob(f"answers/*/{method}-temperature-*.jsonl")))
    if frame.empty:
        raise SystemExit(f"{run}: no rows of {method}")
    return frame[frame.skipped == ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("method_a")
    parser.add_argument("run_b", type=Path)
    parser.add_argument("method_b")
    args = parser.parse_args()
    a, b = cell(args.run_a, args.method_a), cell(args.run_b, args.method_b)
    print(f"{'suite':<10} {'T':>4} {'questions':>9}  tau({args.method_a}) - tau({args.method_b}) [95%]  verdict")
    for (suite, temperature), mine in a.groupby(["suite", "temperature"]):
        theirs = b[(b.suite == suite) & (b.temperature == temperature)]
        diff = paired_difference(mine, theirs)
        if not diff["questions"]:
            continue
        print(f"{suite:<10} {temperature:>4g} {diff['questions']:>9}  {diff['tau_diff']:+.3f} "
              f"[{diff['tau_lo']:+.3f}, {diff['tau_hi']:+.3f}]  {diff['tau_verdict']}")


if __name__ == "__main__":
    main()
