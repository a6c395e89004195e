"""Named estimators over answer rows: tau, throughput, speedup, fidelity, quality, paired differences.

Every figure says which estimator made it (docs/reference.md §4.2-4.5). tau_pooled is Spec-Bench's
"mean accepted tokens" (all steps of all questions pooled, bonus included); tau_macro averages
per question first (HASS). The speedup is Spec-Bench's ratio of mean per-question throughputs,
computed against the baseline rows (the manifest's ``baseline``, vanilla unless it names another)
of the same run on the same questions; both sides count generated token ids, never re-tokenised
text. Pairs whose two rows were timed by different sweeps (a resumed run) are counted, so tables can
say so, and so are pairs timed while other processes shared the machine (rows' ``load``). A method
row pairs only with a baseline row timed on the same device type (rows name it, harness/env.py
``worker``), and a speedup over rows of more than one device type is refused (NaN): ratios from
different hardware are not pooled. Replayed rows (accept lengths without a real decode) enter tau
only, never a throughput. Skipped questions (rows with ``skipped``, which could not run) are counted
apart and enter no estimator; a score averages only the rows that have it. ``cell_stats`` and
``paired`` are the one path every figure takes: the CLI summary and the report both call them.
"""
from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from harness import machine_load
from harness.records import DEFAULT_BASELINE, REPLAY_SUFFIX, Row, scan_rows

GROUP = ["suite", "temperature", "method"]


def load_frame(files: Iterable[Path], notes: list[str] | None = None, baseline: str = DEFAULT_BASELINE) -> pd.DataFrame:
    """One row per question with per-question totals: the first row of each (suite, temperature, method,
    question) in file order. ``skipped`` holds the reason a question could not run ("" when it ran);
    ``baseline`` names the method speedups are measured against; damage found in the files (unreadable
    lines, duplicate rows) is appended to notes."""
    records, seen = [], set()
    for path in files:
        found = scan_rows(path)
        if notes is not None:
            notes.extend(found.notes(path))
        for row in map(Row.from_json, found.rows):
            key = (row.suite, row.temperature, row.method, str(row.question_id))
            if key in seen:
                continue
            seen.add(key)
            records.append(question_record(row, baseline))
    return pd.DataFrame.from_records(records)


def question_record(row: Row, baseline: str) -> dict:
    """A row's per-question totals (turns summed: a turn belongs to its question)."""
    accept = row.accept_lengths
    return {
        "suite": row.suite, "method": row.method, "temperature": row.temperature,
        "question_id": str(row.question_id), "category": row.category, "task": row.task or row.category,
        "lossless": True if row.lossless is None else row.lossless, "baseline": baseline,
        "new_tokens": sum(row.new_tokens), "steps": sum(row.decoding_steps), "accepted": sum(accept),
        "wall_time": seconds(row.wall_time), "draft_time": seconds(row.draft_time or []),
        "verify_time": seconds(row.verify_time or []), "prefill_time": seconds(row.prefill_time or []),
        "tau_question": sum(accept) / len(accept) if accept else float("nan"),
        "text": "\x1e".join(row.turns), "accept_lengths": accept,
        "session": row.timing_session or "", "skipped": row.skipped, "replayed": row.replayed,
        "contended": machine_load.contended(row.load), "device_type": row.device_type,
        **{f"score:{k}": v for k, v in (row.scores or {}).items()},
    }


def seconds(values: list) -> float:
    """Sum of a row's per-turn times; NaN for a replayed row (harness/replay.py), whose times are null."""
    return math.nan if any(v is None for v in values) else float(sum(values))


def tau_pooled(frame: pd.DataFrame) -> float:
    return frame["accepted"].sum() / frame["steps"].sum()


def tau_macro(frame: pd.DataFrame) -> float:
    return frame["tau_question"].mean()


def mean_tps(frame: pd.DataFrame) -> float:
    return (frame["new_tokens"] / frame["wall_time"]).mean()


def answered(frame: pd.DataFrame) -> pd.DataFrame:
    """The questions that ran: the frame without skipped rows."""
    return frame[frame.skipped == ""] if "skipped" in frame.columns else frame


def timed(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose wall times were measured by a real decode (replayed rows have none to compare)."""
    return frame[~frame.replayed.astype(bool)] if "replayed" in frame.columns else frame


def label(method: str, lossless: bool) -> str:
    """A method's name as every table and plot shows it; lossy methods are flagged."""
    return method if lossless else f"{method} (NOT LOSSLESS)"


def baseline_rows(frame: pd.DataFrame, keys: list[str], values: tuple) -> pd.DataFrame:
    """The baseline method's answered rows with the same key values (run, suite, temperature, task ...)."""
    mask = frame.method == frame.baseline if "baseline" in frame.columns else frame.method == DEFAULT_BASELINE
    for key, value in zip(keys, values):
        if key != "method":
            mask &= frame[key] == value
    return answered(frame[mask])


def cell_stats(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell (keys, ending in method): tau (pooled, with interval; macro), mean and total tok/s, speedup
    over the baseline (ratio of means, with interval; total time), the T=0 same-text count, cross-sweep and
    contended pairs, and each score's mean over the rows that have it (with n). Skipped rows are counted."""
    score_columns = [c for c in frame.columns if c.startswith("score:")]
    out = []
    for values, whole in frame.groupby(keys, sort=False):
        cell = answered(whole)
        mine, theirs = paired_with_baseline(cell, baseline_rows(frame, keys, values))
        speed_mine, speed_theirs = timed_pairs(mine, theirs)
        same, compared = same_text(speed_mine, speed_theirs)   # a replayed row's text was not decoded
        tau_lo, tau_hi = tau_pooled_interval(cell)
        sp_lo, sp_hi = speedup_interval(speed_mine, speed_theirs)
        clocked = timed(cell)
        entry = dict(zip(keys, values))
        entry["baseline"] = whole.baseline.iloc[0] if "baseline" in whole.columns else DEFAULT_BASELINE
        lossless = bool(cell.lossless.all())
        entry.update(
            label=label(entry["method"], lossless), lossless=lossless, questions=len(cell),
            skipped=len(whole) - len(cell), paired=len(mine), tokens=int(cell.new_tokens.sum()),
            tau=tau_pooled(cell) if len(cell) else float("nan"), tau_lo=tau_lo, tau_hi=tau_hi,
            tau_macro=tau_macro(cell), tps=mean_tps(clocked) if len(clocked) else float("nan"),
            tps_total=clocked.new_tokens.sum() / clocked.wall_time.sum() if len(clocked) else float("nan"),
            draft_s=clocked.draft_time.sum(), verify_s=clocked.verify_time.sum(),
            speedup=speedup_ratio_of_means(speed_mine, speed_theirs), speedup_lo=sp_lo, speedup_hi=sp_hi,
            speedup_total=speedup_total_time(speed_mine, speed_theirs),
            same_text=same if entry["temperature"] == 0 and compared else None, compared=compared,
            cross_session=cross_session_pairs(speed_mine, speed_theirs),
            contended=contended_rows(speed_mine, speed_theirs) if len(speed_mine) else contended_rows(clocked),
            replayed=int(cell.replayed.astype(bool).sum()) if "replayed" in cell.columns else 0,
            device_types="; ".join(device_types(mine)))
        for column in score_columns:
            name = column.removeprefix("score:")
            entry[f"score:{name}"], entry[f"score:{name}_n"] = cell[column].mean(), int(cell[column].notna().sum())
        out.append(entry)
    return pd.DataFrame(out)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """The CLI's end-of-run table: per (suite, temperature, method), cell_stats's figures under the CLI's
    column names; skipped, cross-sweep and contended columns only when any cell has some."""
    if frame.empty:
        return pd.DataFrame()
    cells = cell_stats(frame, GROUP)
    summary = pd.DataFrame({
        "suite": cells.suite, "T": cells.temperature, "method": cells.method, "questions": cells.questions,
        "skipped": cells.skipped,
        "lossless": [lossless_verdict(l, t, s if s is not None and not pd.isna(s) else 0, n)
                     for l, t, s, n in zip(cells.lossless, cells.temperature, cells.same_text, cells.compared)],
        "tokens": cells.tokens, "tau_pooled": cells.tau, "tau_macro": cells.tau_macro, "tok_per_s": cells.tps_total,
        "draft_s": cells.draft_s, "verify_s": cells.verify_s, "speedup": cells.speedup,
        "same_text": [f"{int(s)}/{n}" if s is not None and not pd.isna(s) else ""
                      for s, n in zip(cells.same_text, cells.compared)],
        "cross_session": [f"{c}/{n}" for c, n in zip(cells.cross_session, cells.paired)],
        "contended": [f"{c}/{n}" for c, n in zip(cells.contended, cells.paired)],
    })
    for column in [c for c in cells.columns if c.startswith("score:")]:
        summary[column.removeprefix("score:")] = cells[column]
    if not summary.skipped.any():
        summary = summary.drop(columns="skipped")
    for column in ("cross_session", "contended"):
        if summary[column].str.startswith("0/").all():
            summary = summary.drop(columns=column)
    return summary


def lossless_verdict(labelled_lossless: bool, temperature: float, same: int, compared: int) -> str:
    """"yes", "NOT LOSSLESS" (a lossy acceptance rule, by its label), or "FAILED": labelled lossless, yet at
    T = 0 some answers differ from the baseline's, which exact verification rules out (a bug, not noise)."""
    if not labelled_lossless:
        return "NOT LOSSLESS"
    return "FAILED" if temperature == 0 and same < compared else "yes"


def lossless_failures(summary: pd.DataFrame) -> list[str]:
    """One line per cell of summarize() whose method is labelled lossless but lost the baseline's text at T = 0."""
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


def paired_with_baseline(cell: pd.DataFrame, base: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of a cell and of its baseline on the questions both answered, in the same order,
    without pairs timed on two different device types (rows recorded before devices were named pair freely)."""
    shared = sorted(set(cell.question_id) & set(base.question_id))
    mine, theirs = (cell.set_index("question_id").loc[shared].reset_index(),
                    base.set_index("question_id").loc[shared].reset_index())
    if "device_type" not in mine.columns:
        return mine, theirs
    a, b = mine.device_type.to_numpy(), theirs.device_type.to_numpy()
    same = (a == b) | (a == "") | (b == "")
    return mine[same].reset_index(drop=True), theirs[same].reset_index(drop=True)


def timed_pairs(mine: pd.DataFrame, theirs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pairs whose both rows were timed by a real decode: the only ones a speedup may use."""
    if "replayed" not in mine.columns:
        return mine, theirs
    keep = ~(mine.replayed.astype(bool).to_numpy() | theirs.replayed.astype(bool).to_numpy())
    return mine[keep].reset_index(drop=True), theirs[keep].reset_index(drop=True)


def contended_rows(*sides: pd.DataFrame) -> int:
    """Questions timed while other processes shared the machine, on either side of a pair (rows without a load
    record are not counted)."""
    if not len(sides[0]) or "contended" not in sides[0].columns:
        return 0
    flags = np.zeros(len(sides[0]), dtype=bool)
    for side in sides:
        flags |= side.contended.fillna(False).astype(bool).to_numpy()
    return int(flags.sum())


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


# Paired differences between methods measured on the same questions.

PAIRED_RESAMPLES = 10_000
PAIRED_INTERVAL = (f"paired 95% percentile bootstrap over questions ({PAIRED_RESAMPLES:,} resamples, seed 0): both "
                   f"methods (and the baseline, for speedup) on the same resampled question ids")


def verdict(low: float, high: float) -> str:
    """"above" when the whole interval of the difference is above 0, "below" when under it."""
    if np.isnan(low) or np.isnan(high):
        return ""
    return "above" if low > 0 else "below" if high < 0 else "not distinguishable"


def _percentiles(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _aligned(rows: pd.DataFrame, questions: list[str]) -> pd.DataFrame:
    return rows.set_index("question_id").loc[questions]


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, base: pd.DataFrame | None = None,
                      resamples: int = PAIRED_RESAMPLES, seed: int = 0) -> dict:
    """Method a minus method b on the questions both answered: pooled tau, per-question tau (mean of the
    per-question differences, and on how many questions a is above / below b), and speedup over the
    baseline rows ``base`` (ratio of mean throughputs, on the questions all three timed by a real decode),
    each with a paired percentile bootstrap interval and a verdict."""
    shared = sorted(set(a.question_id) & set(b.question_id))
    out = {"questions": len(shared)}
    if not shared:
        return out
    x, y = _aligned(a, shared), _aligned(b, shared)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(shared), size=(resamples, len(shared)))
    tau_diff, pooled = pooled_contrast([x, y], [1.0, -1.0], picks)
    per_question = x.tau_question.to_numpy(float) - y.tau_question.to_numpy(float)
    out.update(tau_diff=tau_diff,
               tau_q_diff=float(np.nanmean(per_question)), tau_q_above=int((per_question > 0).sum()),
               tau_q_below=int((per_question < 0).sum()))
    out["tau_lo"], out["tau_hi"] = _percentiles(pooled)
    out["tau_q_lo"], out["tau_q_hi"] = _percentiles(np.nanmean(per_question[picks], axis=1))
    out["tau_verdict"] = verdict(out["tau_lo"], out["tau_hi"])
    out.update(_speedup_difference(timed(x.reset_index()), timed(y.reset_index()), base, rng, resamples))
    return out


def pooled_contrast(cells: list[pd.DataFrame], weights: list[float], picks: np.ndarray) -> tuple[float, np.ndarray]:
    """sum_i w_i * pooled tau(cell_i): on the aligned rows, and on every resample of question positions ``picks``
    (a resample shared by all cells is what pairs them)."""
    point, resampled = 0.0, np.zeros(len(picks))
    for rows, weight in zip(cells, weights):
        accepted, steps = rows.accepted.to_numpy(float), rows.steps.to_numpy(float)
        point += weight * accepted.sum() / steps.sum()
        resampled = resampled + weight * accepted[picks].sum(1) / steps[picks].sum(1)
    return float(point), resampled


def paired_contrast(cells: list[pd.DataFrame], weights: list[float], resamples: int = PAIRED_RESAMPLES,
                    seed: int = 0) -> dict:
    """sum_i w_i * pooled tau(cell_i) on the questions every cell answered, with a paired percentile bootstrap
    interval (one resample of questions shared by all cells) and a verdict. Weights (1, -1, -1, 1) give a
    difference of differences: whether a margin between two methods changed between two training budgets."""
    shared = sorted(set.intersection(*(set(cell.question_id) for cell in cells)))
    out = {"questions": len(shared)}
    if not shared:
        return out
    picks = np.random.default_rng(seed).integers(0, len(shared), size=(resamples, len(shared)))
    out["contrast"], resampled = pooled_contrast([_aligned(cell, shared) for cell in cells], weights, picks)
    out["lo"], out["hi"] = _percentiles(resampled)
    out["verdict"] = verdict(out["lo"], out["hi"])
    return out


def _speedup_difference(a: pd.DataFrame, b: pd.DataFrame, base: pd.DataFrame | None, rng: np.random.Generator,
                        resamples: int) -> dict:
    """(mean tps_a - mean tps_b) / mean tps_base: the difference of the two speedups over the baseline."""
    if base is None or base.empty:
        return {"speed_questions": 0}
    base = timed(base)
    shared = sorted(set(a.question_id) & set(b.question_id) & set(base.question_id))
    if not shared:
        return {"speed_questions": 0}
    rows = [_aligned(side, shared) for side in (a, b, base)]
    kinds = {t for side in rows for t in side.device_type if t} if "device_type" in a.columns else set()
    if len(kinds) > 1:   # ratios from different hardware are never pooled
        return {"speed_questions": len(shared)}
    tps = [(side.new_tokens / side.wall_time).to_numpy(float) for side in rows]
    picks = rng.integers(0, len(shared), size=(resamples, len(shared)))
    diffs = (tps[0][picks].mean(1) - tps[1][picks].mean(1)) / tps[2][picks].mean(1)
    low, high = _percentiles(diffs)
    contended = contended_rows(*[side.reset_index() for side in rows])
    return {"speed_questions": len(shared), "speedup_diff": float((tps[0].mean() - tps[1].mean()) / tps[2].mean()),
            "speedup_lo": low, "speedup_hi": high, "speedup_verdict": verdict(low, high),
            "speed_contended": contended}


def paired(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Every pair of methods with shared questions within each group of ``keys`` (run, suite, temperature
    [, task]): method minus reference, the reference being the baseline when the pair has it, else the method
    met first in the frame (the loaders put the baseline first). Columns as paired_difference returns them,
    plus the labels."""
    out = []
    ran = answered(frame)
    for values, group in ran.groupby(keys, sort=False):
        methods = list(dict.fromkeys(group.method))
        base_name = group.baseline.iloc[0] if "baseline" in group.columns else DEFAULT_BASELINE
        base = group[group.method == base_name]
        lossless = {m: bool(group[group.method == m].lossless.all()) for m in methods}
        for first, second in combinations(methods, 2):
            if REPLAY_SUFFIX in (first.removeprefix(second), second.removeprefix(first)):
                continue   # a method and its own replay: equal by construction (tests/test_replay.py)
            method, reference = (first, second) if second == base_name else (second, first)
            entry = {**dict(zip(keys, values)), "method": method, "reference": reference,
                     "label": label(method, lossless[method]), "reference_label": label(reference, lossless[reference])}
            entry.update(paired_difference(group[group.method == method], group[group.method == reference], base))
            if entry["questions"]:    # methods without a shared question have nothing to pair
                out.append(entry)
    return pd.DataFrame(out)


def format_paired(pairs: pd.DataFrame) -> str:
    """The CLI's table of paired differences (the report's "Paired comparisons" numbers)."""
    if pairs.empty:
        return ""

    def shown(value: float, low: float, high: float) -> str:
        return "" if pd.isna(value) else f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"

    table = pd.DataFrame({
        "suite": pairs.suite, "T": pairs.temperature, "method": pairs.method, "reference": pairs.reference,
        "questions": pairs.questions, "d_tau": [shown(*v) for v in zip(pairs.tau_diff, pairs.tau_lo, pairs.tau_hi)],
        "tau": pairs.tau_verdict,
        "d_speedup": [shown(*v) for v in zip(*(pairs.get(c, pd.Series([float("nan")] * len(pairs)))
                                                for c in ("speedup_diff", "speedup_lo", "speedup_hi")))],
        "speedup": pairs.get("speedup_verdict", pd.Series([""] * len(pairs))).fillna(""),
    })
    return f"paired, method - reference ({PAIRED_INTERVAL}):\n" + table.to_string(index=False)
