"""Named estimators over answer rows: tau, throughput, speedup, fidelity to vanilla, quality.

Every figure says which estimator made it (REFERENCE §4.2-4.5). tau_pooled is Spec-Bench's
"mean accepted tokens" (all steps of all questions pooled, bonus included); tau_macro averages
per question first (HASS). The speedup is Spec-Bench's ratio of mean per-question throughputs,
computed against the vanilla rows of the same run on the same questions; both sides count
generated token ids, never re-tokenised text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from harness.records import read_rows

GROUP = ["suite", "temperature", "method"]


def load_frame(files: Iterable[Path]) -> pd.DataFrame:
    """One row per answered question with per-question totals."""
    records = []
    for path in files:
        for row in read_rows(path):
            choice = row["choices"][0]
            accept = choice["accept_lengths"]
            records.append({
                "suite": row["suite"], "method": row["method"], "temperature": row["temperature"],
                "question_id": str(row["question_id"]), "category": row["category"],
                "task": row.get("task") or row["category"], "lossless": row.get("lossless", True),
                "new_tokens": sum(choice["new_tokens"]), "steps": sum(choice["decoding_steps"]),
                "accepted": sum(accept), "wall_time": sum(choice["wall_time"]),
                "draft_time": sum(row.get("draft_time", [])), "verify_time": sum(row.get("verify_time", [])),
                "prefill_time": sum(row.get("prefill_time", [])),
                "tau_question": sum(accept) / len(accept) if accept else float("nan"),
                "text": "\x1e".join(choice["turns"]),
                **{f"score:{k}": v for k, v in row.get("scores", {}).items()},
            })
    return pd.DataFrame.from_records(records)


def tau_pooled(frame: pd.DataFrame) -> float:
    return frame["accepted"].sum() / frame["steps"].sum()


def tau_macro(frame: pd.DataFrame) -> float:
    return frame["tau_question"].mean()


def mean_tps(frame: pd.DataFrame) -> float:
    return (frame["new_tokens"] / frame["wall_time"]).mean()


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (suite, temperature, method): tau, throughput, speedup and fidelity against vanilla."""
    if frame.empty:
        return pd.DataFrame()
    score_columns = [c for c in frame.columns if c.startswith("score:")]
    out = []
    for (suite, temperature, method), cell in frame.groupby(GROUP, sort=False):
        base = frame[(frame.suite == suite) & (frame.temperature == temperature) & (frame.method == "vanilla")]
        shared = sorted(set(cell.question_id) & set(base.question_id))
        mine = cell[cell.question_id.isin(shared)].set_index("question_id").loc[shared]
        theirs = base[base.question_id.isin(shared)].set_index("question_id").loc[shared]
        entry = {
            "suite": suite, "T": temperature, "method": method, "questions": len(cell),
            "lossless": bool(cell.lossless.all()), "tokens": int(cell.new_tokens.sum()),
            "tau_pooled": tau_pooled(cell), "tau_macro": tau_macro(cell),
            "tok_per_s": cell.new_tokens.sum() / cell.wall_time.sum(),
            "draft_s": cell.draft_time.sum(), "verify_s": cell.verify_time.sum(),
            "speedup": mean_tps(mine) / mean_tps(theirs) if shared else float("nan"),
            "same_text": f"{int((mine.text == theirs.text).sum())}/{len(shared)}" if temperature == 0 and shared else "",
        }
        for column in score_columns:
            entry[column.removeprefix("score:")] = cell[column].mean()
        out.append(entry)
    return pd.DataFrame(out)


def format_summary(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "no results"
    shown = summary.copy()
    shown["lossless"] = shown["lossless"].map({True: "yes", False: "NOT LOSSLESS"})
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")
