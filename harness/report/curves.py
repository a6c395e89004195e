"""``python -m harness curves``: the learning curves of trained drafts, and whether each reached its goal.

Reads only checkpoint folders (the ``config.json`` every ``harness train`` run writes, whose
``training.evals`` hold the held-out top-1 agreement with the target at each evaluation). Writes
``curves.md`` (one row per checkpoint: last top-1 per depth, the gain over the last evaluation interval,
why training stopped, whether the trainer's own plateau rule holds, and the goal) and ``curves.png`` /
``curves.svg`` (depth-1 top-1 against step, the goal as a dashed line).

Curves of different checkpoints share an axis only when their held-out sets match: a continued run that
draws its held-out samples past the data its start saw (``holdout_from``) measures on other text than
its start did, so the table names each run's held-out split.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.report.plots import plt, save
from harness.report.render import markdown_table
from harness.report.tables import Table, num
from harness.train.trainer import reached_plateau


@dataclass
class Curve:
    """One checkpoint's held-out evaluations and how its training run ended."""
    label: str
    method: str
    evals: pd.DataFrame            # columns step, top1_depth1, top1_depth2, ...
    steps: int
    seconds: float
    stopped_by: str | None         # "steps", "budget", "plateau" or None (ran all its epochs)
    patience: int | None
    held_out: str                  # which samples the top-1 is measured on
    samples: int


def load_curve(directory: Path) -> Curve:
    """A checkpoint folder's curve; a clear error when the folder holds no training record."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{directory}: no config.json, so not a checkpoint written by `harness train`")
    config = json.loads(config_path.read_text())
    training = config.get("training") or {}
    evals = training.get("evals") or []
    if not evals:
        raise UserError(f"{directory}: config.json records no held-out evaluations (training.evals)")
    settings = training.get("config", {})
    start = settings.get("holdout_from") or 0
    held_out = f"{settings.get('holdout', '?')} of samples" + (f" from #{start}" if start else "")
    return Curve(label=str(directory), method=config.get("method", "?"),
                 evals=pd.DataFrame(evals).sort_values("step", kind="stable").reset_index(drop=True),
                 steps=int(training.get("steps", 0)), seconds=float(training.get("seconds", 0.0)),
                 stopped_by=training.get("stopped_by"), patience=settings.get("patience"),
                 held_out=held_out, samples=int(training.get("data_samples", 0)))


def summary(curves: list[Curve], goal: float | None) -> pd.DataFrame:
    """One row per curve: where it ended and whether it still rose."""
    rows = []
    for curve in curves:
        last = curve.evals.iloc[-1]
        previous = curve.evals.iloc[-2]["top1_depth1"] if len(curve.evals) > 1 else float("nan")
        depths = sorted(c for c in curve.evals.columns if c.startswith("top1_depth"))
        row = {"checkpoint": curve.label, "method": curve.method, "samples": curve.samples,
               "held_out": curve.held_out, "steps": curve.steps, "seconds": curve.seconds,
               "stopped_by": curve.stopped_by or "epochs",
               "plateau": reached_plateau(curve.evals.to_dict("records"), curve.patience),
               "last_gain": last["top1_depth1"] - previous}
        row.update({f"depth{c.removeprefix('top1_depth')}": last[c] for c in depths})
        if goal is not None:
            row["goal_reached"] = bool(last["top1_depth1"] >= goal)
        rows.append(row)
    return pd.DataFrame(rows)


def plot(curves: list[Curve], goal: float | None, out_dir: Path) -> None:
    fig, axis = plt.subplots(figsize=(6.4, 3.6 + 0.2 * len(curves)))
    for curve in curves:
        axis.plot(curve.evals["step"], curve.evals["top1_depth1"], marker="o", markersize=3,
                  label=f"{curve.label} (held-out {curve.held_out})")
    if goal is not None:
        axis.axhline(goal, linestyle="--", color="grey", linewidth=1, label=f"goal {goal:g}")
    axis.set_xlabel("training step (this run)")
    axis.set_ylabel("held-out top-1, depth 1")
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    save(fig, out_dir, "curves")


def write(directories: list[Path], out_dir: Path, goal: float | None) -> Path:
    curves = [load_curve(directory) for directory in directories]
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary(curves, goal)
    plot(curves, goal, out_dir)
    shown = table.assign(**{c: table[c].map(lambda v: num(v, 3)) for c in table.columns
                            if c.startswith("depth") or c == "last_gain"})
    shown = shown.map(lambda v: ("yes" if v else "no") if isinstance(v, bool) else str(v))
    caption = ("Held-out top-1 agreement with the target's greedy token at each draft depth, last evaluation "
               "of each run; last_gain: the depth-1 change over the last evaluation interval; plateau: the "
               "trainer's rule (no new best depth-1 top-1 in the last `patience` evaluations); stopped_by "
               "steps or budget: the run ended on its budget, not on a plateau.")
    text = f"# Learning curves\n\n{markdown_table(Table('curves', 'Learning curves', caption, shown))}\n\n" \
           "![held-out depth-1 top-1 against step](curves.png)\n"
    path = out_dir / "curves.md"
    path.write_text(text)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", type=Path, nargs="+", help="checkpoint folders written by `harness train`")
    parser.add_argument("--out", type=Path, default=Path("reports/curves"), help="folder for curves.md and the plot")
    parser.add_argument("--goal", type=float, default=None, help="a depth-1 top-1 to mark and check, e.g. 0.55")


def run(args: argparse.Namespace) -> None:
    print(f"curves: {write(args.checkpoints, args.out, args.goal)}")
