"""How much a cell's answers repeat themselves: the share of each answer's n-token windows that repeat an earlier
window of the same answer, averaged over questions, per task (Spec-Bench) or category, and over the cell.

Why: prompt lookup (PLD) drafts by copying an n-gram's earlier continuation, so its tau rises with repetition in
the target's own text; a small target that loops at T = 0 can put PLD above learned drafts, as on Spec-Bench with
SmolLM2-135M (results/smollm2-eq2943-specbench-t0/README.md). Counts the first turn's token ids only; copying from
the prompt is not counted.

Usage: python benchmarks/answer_repetition.py ANSWERS.jsonl [--n 8]
  e.g. python benchmarks/answer_repetition.py \
           results/smollm2-eq2943-specbench-t0/answers/specbench/vanilla-temperature-0.jsonl
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def repeated_share(ids: list[int], n: int) -> float:
    """The share of the answer's n-token windows that equal an earlier window of it (0 when it has none)."""
    windows = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(windows)) / len(windows) if windows else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("answers", type=Path)
    parser.add_argument("--n", type=int, default=8, help="window length in tokens")
    args = parser.parse_args()
    rows = pd.read_json(args.answers, lines=True)
    rows = rows[rows.get("skipped", pd.Series("", index=rows.index)).fillna("") == ""]
    group = "task" if "task" in rows and rows.task.notna().all() else "category"
    rows["repeated"] = [repeated_share(list(turns[0]), args.n) for turns in rows.token_ids]
    table = rows.groupby(group).repeated.agg(["count", "mean"])
    table.loc["all"] = [len(rows), rows.repeated.mean()]
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
