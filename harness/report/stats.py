"""Numbers behind every table and plot, computed from the question frame with harness.metrics estimators.

Each function returns a numeric (long) DataFrame; tables.py formats them and plots.py draws them.
A speedup always uses the baseline rows (vanilla unless the manifest or --baseline names another) of
the same run, suite, temperature (and task) on the questions both answered, never a baseline from
another run. A missing baseline leaves NaN, shown as a gap.
Paired differences (``paired``) compare every two methods on the questions both answered.
Pairs whose two rows were timed by different sweeps are counted (``cross_session``) for the notes, and
the device types of the paired rows listed: a speedup over several is refused (harness/metrics.py).
"""
from __future__ import annotations

import pandas as pd

from harness import metrics

KEYS = ["run", "suite", "temperature", "method"]
LATENCY_PARTS = ["prefill", "draft", "verify", "other"]


def cell_stats(frame: pd.DataFrame, by_task: bool = False) -> pd.DataFrame:
    """metrics.cell_stats per run, suite, temperature, method (and task): the CLI summary's numbers."""
    return metrics.cell_stats(frame, KEYS + ["task"] if by_task else KEYS)


def paired(frame: pd.DataFrame, by_task: bool = False) -> pd.DataFrame:
    """metrics.paired per run, suite, temperature (and task): every pair of methods on shared questions."""
    return metrics.paired(frame, KEYS[:-1] + ["task"] if by_task else KEYS[:-1])


def lossless_failures(cells: pd.DataFrame) -> list[str]:
    """A line per cell labelled lossless whose T = 0 answers are not all vanilla's: a failure, not a figure."""
    if cells.empty:
        return []
    same = pd.to_numeric(cells.same_text, errors="coerce")
    failed = cells[cells.lossless & same.notna() & (same < cells.compared)]
    return [f"**LOSSLESS CHECK FAILED**: {row.method} on {row.suite} (T=0): {int(row.same_text)} of "
            f"{row.compared} answers equal vanilla's." for row in failed.itertuples()]


def latency(frame: pd.DataFrame) -> pd.DataFrame:
    """Milliseconds per generated token in prefill, draft, verify and other, per cell."""
    out = []
    for values, cell in frame.groupby(KEYS, sort=False):
        out.append({**dict(zip(KEYS, values)), "label": metrics.label(values[-1], bool(cell.lossless.all())),
                    **metrics.latency_per_token(metrics.timed(cell))})
    return pd.DataFrame(out)


def acceptance(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(histogram of accept lengths, P(accept length > d) by depth d), long format, per cell.

    A method that drafts nothing (vanilla) has no step above length 1, so no depth rows."""
    hist, depth = [], []
    for values, cell in frame.groupby(KEYS, sort=False):
        base = {**dict(zip(KEYS, values)), "label": metrics.label(values[-1], bool(cell.lossless.all()))}
        for length, share in metrics.accept_histogram(cell.accept_lengths).items():
            hist.append({**base, "accept_length": int(length), "share": share})
        for d, p in metrics.acceptance_by_depth(cell.accept_lengths).items():
            depth.append({**base, "depth": int(d), "p_accept": p})
    return pd.DataFrame(hist), pd.DataFrame(depth)


def quality(frame: pd.DataFrame) -> pd.DataFrame:
    """Each suite score (accuracy, pass@1, ...) of a method beside vanilla's on the questions both have a
    score for (on all of the method's scored questions when vanilla has none): unscored answers (HumanEval
    without --allow-code-exec) never count as zeros. ``questions`` is that n, ``answered`` the cell's size."""
    scores = [c for c in frame.columns if c.startswith("score:")]
    out = []
    for values, cell in frame.groupby(KEYS, sort=False):
        mine, theirs = metrics.paired_with_baseline(cell, metrics.baseline_rows(frame, KEYS, values))
        for column in scores:
            if cell[column].isna().all():
                continue
            both = (mine[column].notna() & theirs[column].notna()).to_numpy()
            if both.any():
                value, vanilla, n = mine[column][both].mean(), theirs[column][both].mean(), int(both.sum())
            else:
                value, vanilla, n = cell[column].mean(), float("nan"), int(cell[column].notna().sum())
            out.append({**dict(zip(KEYS, values)), "label": metrics.label(values[-1], bool(cell.lossless.all())),
                        "score": column.removeprefix("score:"), "value": value, "vanilla": vanilla,
                        "questions": n, "answered": len(cell)})
    return pd.DataFrame(out)


def compare(cells: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """tau and speedup of each run side by side, with ratios of every later run over the first."""
    keys = [k for k in ("suite", "temperature", "task", "label") if k in cells.columns]
    wide = cells.pivot_table(index=keys, columns="run", values=["tau", "speedup"], aggfunc="first", dropna=False)
    out = pd.DataFrame(index=wide.index)
    for run in runs:
        for metric in ("tau", "speedup"):
            out[f"{metric} [{run}]"] = wide[(metric, run)] if (metric, run) in wide.columns else float("nan")
    for run in runs[1:]:
        for metric in ("tau", "speedup"):
            out[f"{metric} ratio {run}/{runs[0]}"] = out[f"{metric} [{run}]"] / out[f"{metric} [{runs[0]}]"]
    return out.reset_index()
