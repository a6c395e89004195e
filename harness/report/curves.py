"""``python -m harness curves``: the learning curves of trained drafts, and whether each reached its goal.

Reads only checkpoint folders (the ``config.json`` every ``harness train`` run writes, whose
``training.evals`` hold the held-out top-1 agreement with the target at each evaluation). Writes
``curves.md`` (one row per checkpoint: last top-1 per depth, the gain over the last evaluation interval,
why training stopped, whether the trainer's own plateau rule holds, the goal, and the compute spent in
core-hours) and ``curves.png`` /
``curves.svg`` (depth-1 top-1 against step, the goal as a dashed line).

Curves of different checkpoints share an axis only when their held-out sets match: a continued run that
draws its held-out samples past the data its start saw (``holdout_from``) measures on other text than
its start did, so the table names each run's held-out split. ``--lineage`` follows each checkpoint's
``--init`` chain back and draws one curve over the draft's whole training, steps counted from its first
run, with the evaluations of every run that measured the same held-out samples (the earlier runs' steps
still count): whether a draft continued pass after pass has stopped improving.
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
    core_hours: float              # wall seconds x torch threads / 3600: the cores the run held (nan if unrecorded)
    stopped_by: str | None         # "steps", "budget", "plateau" or None (ran all its epochs)
    patience: int | None
    held_out: str                  # which samples the top-1 is measured on
    samples: int
    lineage: str = ""              # with --lineage: the runs joined, and what their records leave out
    run_start: float | None = None  # with --lineage: depth-1 top-1 at the end of the last earlier run on this split


def read_config(directory: Path) -> dict:
    """A checkpoint folder's config.json; a clear error when the folder has none."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{directory}: no config.json, so not a checkpoint written by `harness train`")
    return json.loads(config_path.read_text())


def core_hours(training: dict) -> float:
    """A run's wall time times the torch threads it ran with, in hours; nan when the run did not record its
    threads (a count of cores held, not of busy CPU time: a thread waiting on its partner still holds its core)."""
    threads = (training.get("env") or {}).get("torch_threads")
    return float(training.get("seconds", 0.0)) * threads / 3600 if threads else float("nan")


def load_curve(directory: Path, config: dict | None = None) -> Curve:
    """A checkpoint folder's curve (``config``: its config.json, when already read); a clear error when the
    folder holds no training record."""
    config = read_config(directory) if config is None else config
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
                 core_hours=core_hours(training), stopped_by=training.get("stopped_by"),
                 patience=settings.get("patience"), held_out=held_out, samples=int(training.get("data_samples", 0)))


def held_out_split(config: dict) -> tuple:
    """What fixes a run's held-out samples in ``FeatureData.split``: share, seed, first index, the pool they
    are drawn from, and how many tokens of each are kept."""
    training = config.get("training") or {}
    settings, samples = training.get("config", {}), training.get("data_samples", 0)
    pool = settings.get("holdout_of") or min(settings.get("max_samples") or samples, samples)
    return (settings.get("holdout"), settings.get("seed"), settings.get("holdout_from") or 0, pool,
            settings.get("max_len"))


def load_lineage(directory: Path) -> Curve:
    """The curve of ``directory``'s draft over its whole ``--init`` chain (oldest run first), keeping the
    evaluations of the runs whose held-out split is the last run's; a chain that leaves the checkpoints
    written by ``harness train`` (a released draft, a folder not here) starts where it leaves them."""
    chain, unrecorded = [(directory, read_config(directory))], ""
    while True:
        init = (chain[-1][1].get("training") or {}).get("init")
        if init and Path(init) in [folder for folder, _ in chain]:   # trained on in place: only its last run's record
            unrecorded = (f"; {init} was trained on in place, so only its last run is on record: earlier steps "
                          "are not counted, and drafts started from it before that run are miscounted by it")
            break
        if not init or not (Path(init) / "config.json").is_file():
            break
        chain.append((Path(init), read_config(Path(init))))
    last = load_curve(directory, chain[0][1])
    split = held_out_split(chain[0][1])
    parts, offset, seconds, hours = [], 0, 0.0, 0.0
    for folder, config in reversed(chain):
        training = config.get("training") or {}
        if held_out_split(config) == split and training.get("evals"):
            parts.append(load_curve(folder, config).evals.assign(step=lambda frame, at=offset: frame["step"] + at))
        offset += int(training.get("steps", 0))
        seconds += float(training.get("seconds", 0.0))
        hours += core_hours(training)
    # parts[-1] is the last run (the split is its own); parts[-2] the latest earlier run on the same held-out split.
    run_start = float(parts[-2]["top1_depth1"].iloc[-1]) if len(parts) > 1 else None
    return Curve(label=str(directory), method=last.method, evals=pd.concat(parts, ignore_index=True), steps=offset,
                 seconds=seconds, core_hours=hours, stopped_by=last.stopped_by, patience=last.patience,
                 held_out=last.held_out, samples=last.samples, run_start=run_start,
                 lineage=f"{len(chain)} run{'s' if len(chain) > 1 else ''} from {chain[-1][0]}{unrecorded}")


def interval_start(evals: pd.DataFrame) -> float | None:
    """Depth-1 top-1 one evaluation interval (the median gap between evaluations) before the last one: an
    epoch's end evaluates a step after the every-N-steps evaluation, and a one-step gain says nothing."""
    if len(evals) < 2:
        return None
    steps = evals["step"]
    earlier = evals[steps <= steps.iloc[-1] - steps.diff().median()]
    start = earlier.iloc[-1] if len(earlier) else evals.iloc[0]
    return float(start["top1_depth1"])


def summary(curves: list[Curve], goal: float | None) -> pd.DataFrame:
    """One row per curve: where it ended and whether it still rose."""
    rows = []
    for curve in curves:
        last = curve.evals.iloc[-1]
        previous = interval_start(curve.evals)
        depths = sorted(c for c in curve.evals.columns if c.startswith("top1_depth"))
        row = {"checkpoint": curve.label, **({"lineage": curve.lineage} if curve.lineage else {}),
               "method": curve.method, "samples": curve.samples,
               "held_out": curve.held_out, "steps": curve.steps, "seconds": curve.seconds,
               "core_hours": curve.core_hours,
               "stopped_by": curve.stopped_by or "epochs",
               "plateau": reached_plateau(curve.evals.to_dict("records"), curve.patience),
               "last_gain": last["top1_depth1"] - previous if previous is not None else float("nan")}
        if curve.lineage:   # a run's gain within its schedule ends near 0 as its learning rate reaches 0; a whole
            # pass's gain over the run before it says whether more training still pays
            row["run_gain"] = last["top1_depth1"] - curve.run_start if curve.run_start is not None else float("nan")
        row.update({f"depth{c.removeprefix('top1_depth')}": last[c] for c in depths})
        if goal is not None:
            row["goal_reached"] = bool(last["top1_depth1"] >= goal)
        rows.append(row)
    return pd.DataFrame(rows)


def plot(curves: list[Curve], goal: float | None, out_dir: Path, lineage: bool = False) -> None:
    fig, axis = plt.subplots(figsize=(6.4, 3.6 + 0.2 * len(curves)))
    for curve in curves:
        axis.plot(curve.evals["step"], curve.evals["top1_depth1"], marker="o", markersize=3,
                  label=f"{curve.label} (held-out {curve.held_out})")
    if goal is not None:
        axis.axhline(goal, linestyle="--", color="grey", linewidth=1, label=f"goal {goal:g}")
    axis.set_xlabel("training step (from the first run of the --init chain)" if lineage else "training step (this run)")
    axis.set_ylabel("held-out top-1, depth 1")
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    save(fig, out_dir, "curves")


def write(directories: list[Path], out_dir: Path, goal: float | None, lineage: bool = False) -> Path:
    curves = [(load_lineage if lineage else load_curve)(directory) for directory in directories]
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary(curves, goal)
    plot(curves, goal, out_dir, lineage)
    shown = table.assign(seconds=table["seconds"].map(lambda v: f"{v:,.0f}"),
                         **{c: table[c].map(lambda v: num(v, 3)) for c in table.columns
                            if c.startswith("depth") or c in ("last_gain", "run_gain")},
                         core_hours=table["core_hours"].map(lambda v: num(v, 2)))
    shown = shown.map(lambda v: ("yes" if v else "no") if isinstance(v, bool) else str(v))
    caption = ("Held-out top-1 agreement with the target's greedy token at each draft depth, last evaluation "
               "of each run; last_gain: the depth-1 change over the last evaluation interval (the median gap between "
               "evaluations); plateau: the "
               "trainer's rule (no new best depth-1 top-1 in the last `patience` evaluations); stopped_by "
               "steps or budget: the run ended on its budget, not on a plateau; core_hours: wall seconds times "
               "the run's torch threads (the cores it held), in hours."
               + (" Lineage: steps, seconds and core-hours summed over the --init chain; the curve and the plateau "
                  "rule use the evaluations of every run in it on the same held-out samples; run_gain: the depth-1 "
                  "change over the last run, from the end of the run before it (a run's own last_gain ends near 0 "
                  "as its learning rate decays to 0)." if lineage else ""))
    text = f"# Learning curves\n\n{markdown_table(Table('curves', 'Learning curves', caption, shown))}\n\n" \
           "![held-out depth-1 top-1 against step](curves.png)\n"
    path = out_dir / "curves.md"
    path.write_text(text)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", type=Path, nargs="+", help="checkpoint folders written by `harness train`")
    parser.add_argument("--out", type=Path, default=Path("reports/curves"), help="folder for curves.md and the plot")
    parser.add_argument("--goal", type=float, default=None, help="a depth-1 top-1 to mark and check, e.g. 0.55")
    parser.add_argument("--lineage", action="store_true",
                        help="follow each checkpoint's --init chain: one curve over all its training runs")


def run(args: argparse.Namespace) -> None:
    print(f"curves: {write(args.checkpoints, args.out, args.goal, args.lineage)}")
