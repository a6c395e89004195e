"""Named estimators over answer rows: tau, throughput, speedup, fidelity to vanilla, quality.

Every figure says which estimator made it (docs/reference.md §4.2-4.5). tau_pooled is Spec-Bench's
"mean accepted tokens" (all steps of all questions pooled, bonus included); tau_macro averages
per question first (HASS). The speedup is Spec-Bench's ratio of mean per-question throughputs,
computed against the vanilla rows of the same run on the same questions; both sides count
generated token ids, never re-tokenised text. Pairs whose two rows were timed by different sweeps
(a resumed run) are counted, so tables can say so. A method row pairs only with a vanilla row timed on
the same device type (rows name it, harness/env.py ``worker``), and a speedup over rows of more than
one device type is refused (NaN): ratios from different hardware are not pooled. Skipped questions
(rows with ``skipped``, which could not run) are counted apart and enter no estimator; a score
averages only the rows that have it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from harness.records import scan_rows

GROUP = ["suite", "temperature", "method"]


def load_frame(files: Iterable[Path], notes: list[str] | None = None) -> pd.DataFrame:
    """One row per question with per-question totals: the first row of each (suite, temperature, method,
    question) in file order. ``skipped`` holds the reason a question could not run ("" when it ran);
    damage found in the files (unreadable lines, duplicate rows) is appended to notes."""
    records, seen = [], set()
    for path in files:
        found = scan_rows(path)
        if notes is not None:
            notes.extend(found.notes(path))
        for row in found.rows:
            key = (row["suite"], row["temperature"], row["method"], str(row["question_id"]))
            if key in seen:
                continue
            seen.add(key)
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
                "text": "\x1e".join(choice["turns"]), "accept_lengths": accept,
                "session": row.get("timing_session") or "", "skipped": row.get("skipped") or "",
                "device_type": (row.get("worker") or {}).get("device_type", ""),
                **{f"score:{k}": v for k, v in row.get("scores", {}).items()},
            })
    return pd.DataFrame.from_records(records)


def tau_pooled(frame: pd.DataFrame) -> float:
    return frame["accepted"].sum() / frame["steps"].sum()


def tau_macro(frame: pd.DataFrame) -> float:
    return frame["tau_question"].mean()


def mean_tps(frame: pd.DataFrame) -> float:
    return (frame["new_tokens"] / frame["wall_time"]).mean()


def answered(frame: pd.DataFrame) -> pd.DataFrame:
    """The questions that ran: the frame without skipped rows."""
    return frame[frame.skipped == ""] if "skipped" in frame.columns else frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (suite, temperature, method): tau, throughput, speedup and fidelity against vanilla, each
    score's mean over the rows that have it (with n), and skipped questions and cross-sweep pairs when any."""
    if frame.empty:
        return pd.DataFrame()
    ran = answered(frame)
    score_columns = [c for c in frame.columns if c.startswith("score:")]
    out = []
    for (suite, temperature, method), whole in frame.groupby(GROUP, sort=False):
        cell = answered(whole)
        base = ran[(ran.suite == suite) & (ran.temperature == temperature) & (ran.method == "vanilla")]
        mine, theirs = paired_with_vanilla(cell, base)
        same, compared = same_text(mine, theirs)
        entry = {
            "suite": suite, "T": temperature, "method": method, "questions": len(cell),
            "skipped": len(whole) - len(cell),
            "lossless": lossless_verdict(bool(cell.lossless.all()), temperature, same, compared),
            "tokens": int(cell.new_tokens.sum()),
            "tau_pooled": tau_pooled(cell) if len(cell) else float("nan"),
            "tau_macro": tau_macro(cell),
            "tok_per_s": cell.new_tokens.sum() / cell.wall_time.sum() if len(cell) else float("nan"),
            "draft_s": cell.draft_time.sum(), "verify_s": cell.verify_time.sum(),
            "speedup": speedup_ratio_of_means(mine, theirs),
            "same_text": f"{same}/{compared}" if temperature == 0 and compared else "",
            "cross_session": f"{cross_session_pairs(mine, theirs)}/{len(mine)}",
        }
        for column in score_columns:
            name = column.removeprefix("score:")
            entry[name], entry[f"{name}_n"] = cell[column].mean(), int(cell[column].notna().sum())
        out.append(entry)
    summary = pd.DataFrame(out)
    if not summary.skipped.any():
        summary = summary.drop(columns="skipped")
    if summary.cross_session.str.startswith("0/").all():
        summary = summary.drop(columns="cross_session")
    return summary


def lossless_verdict(labelled_lossless: bool, temperature: float, same: int, compared: int) -> str:
    """"yes", "NOT LOSSLESS" (a lossy acceptance rule, by its label), or "FAILED": labelled lossless, yet at
    T = 0 some answers differ from vanilla's, which exact verification rules out (a bug, not noise)."""
    if not labelled_lossless:
        return "NOT LOSSLESS"
    return "FAILED" if temperature == 0 and same < compared else "yes"


def lossless_failures(summary: pd.DataFrame) -> list[str]:
    """One line per cell of summarize() whose method is labelled lossless but lost vanilla's text at T = 0."""
    if summary.empty:
        return []
    failed = summary[summary.lossless == "FAILED"]
    return [f"LOSSLESS CHECK FAILED: {row.method} on {row.suite} at T=0: only {row.same_text} answers equal "
            f"vanilla's" for row in failed.itertuples()]


def format_summary(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "no results"
    return summary.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")


# Estimators for reports (harness.report): paired baselines, intervals, acceptance shape, latency.

INTERVAL = "95% percentile bootstrap over questions (2000 resamples, seed 0; speedup resamples method and vanilla in pairs)"


def paired_with_vanilla(cell: pd.DataFrame, base: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of a cell and of its vanilla baseline on the questions both answered, in the same order,
    without pairs timed on two different device types (rows recorded before devices were named pair freely)."""
    shared = sorted(set(cell.question_id) & set(base.question_id))
    mine, theirs = (cell.set_index("question_id").loc[shared].reset_index(),
                    base.set_index("question_id").loc[shared].reset_index())
    if "device_type" not in mine.columns:
        return mine, theirs
    a, b = mine.device_type.to_numpy(), theirs.device_type.to_numpy()
    same = (a == b) | (a == "") | (b == "")
    return mine[same].reset_index(drop=True), theirs[same].reset_index(drop=True)


def device_types(rows: pd.DataFrame) -> list[str]:
    """The named device types rows were timed on."""
    if "device_type" not in rows.columns:
        return []
    return sorted(t for t in set(rows.device_type) if t)


def pooled_over_devices(mine: pd.DataFrame) -> bool:
    """Paired rows from more than one device type: their speedup ratios must not be pooled into one figure."""
    return len(device_types(mine)) > 1


def cross_session_pairs(mine: pd.DataFrame, theirs: pd.DataFrame) -> int:
    """Paired questions whose method row and vanilla row were timed by different sweeps (processes).
    Rows recorded before sessions existed have none and are not counted."""
    if not len(mine) or "session" not in mine.columns:
        return 0
    a, b = mine.session.to_numpy(), theirs.session.to_numpy()
    return int(((a != b) & (a != "") & (b != "")).sum())


def speedup_ratio_of_means(mine: pd.DataFrame, theirs: pd.DataFrame) -> float:
    """Spec-Bench's SR: mean per-question throughput of the method over that of vanilla (paired rows);
    NaN over rows of several device types."""
    return mean_tps(mine) / mean_tps(theirs) if len(mine) and not pooled_over_devices(mine) else float("nan")


def speedup_total_time(mine: pd.DataFrame, theirs: pd.DataFrame) -> float:
    """Total-time ratio (docs/reference.md §4.3): all tokens over all time, method over vanilla; weights long answers more."""
    if not len(mine) or pooled_over_devices(mine):
        return float("nan")
    return (mine.new_tokens.sum() / mine.wall_time.sum()) / (theirs.new_tokens.sum() / theirs.wall_time.sum())


def ratio_interval(numerator, denominator, level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerator) / sum(denominator), resampling paired entries."""
    import numpy as np

    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if len(num) == 0:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    ratios = num[picks].sum(axis=1) / den[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def tau_pooled_interval(frame: pd.DataFrame) -> tuple[float, float]:
    return ratio_interval(frame.accepted, frame.steps)


def speedup_interval(mine: pd.DataFrame, theirs: pd.DataFrame) -> tuple[float, float]:
    """Interval of speedup_ratio_of_means: a ratio of sums of per-question throughputs over the same questions."""
    if pooled_over_devices(mine):
        return float("nan"), float("nan")
    return ratio_interval(mine.new_tokens / mine.wall_time, theirs.new_tokens / theirs.wall_time)


def same_text(mine: pd.DataFrame, theirs: pd.DataFrame) -> tuple[int, int]:
    """(questions whose answer text equals vanilla's, questions compared), on paired rows."""
    return int((mine.text.to_numpy() == theirs.text.to_numpy()).sum()), len(mine)


def accept_histogram(accept_lengths: Iterable[list[int]]) -> pd.Series:
    """Fraction of decoding steps that committed each accept length (bonus included), over all questions."""
    steps = pd.Series([a for lengths in accept_lengths for a in lengths], dtype=int)
    return steps.value_counts(normalize=True).sort_index()


def acceptance_by_depth(accept_lengths: Iterable[list[int]]) -> pd.Series:
    """P(accept length > d) for d = 1 .. max accept length - 1: the share of steps whose draft token at depth d
    was accepted (an accept length counts accepted drafts + 1, so a > d means depths 1..d all passed)."""
    steps = pd.Series([a for lengths in accept_lengths for a in lengths], dtype=int)
    if steps.empty:
        return pd.Series(dtype=float)
    depths = range(1, int(steps.max()))
    return pd.Series([float((steps > d).mean()) for d in depths], index=list(depths), dtype=float)


def latency_per_token(frame: pd.DataFrame) -> dict[str, float]:
    """Milliseconds per generated token spent in prefill, drafting, verification and the rest of the call."""
    tokens = frame.new_tokens.sum()
    parts = {"prefill": frame.prefill_time.sum(), "draft": frame.draft_time.sum(), "verify": frame.verify_time.sum()}
    parts["other"] = frame.wall_time.sum() - sum(parts.values())
    return {name: 1000 * seconds / tokens if tokens else float("nan") for name, seconds in parts.items()}
