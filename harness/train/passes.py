"""``harness train --passes N``: train pass after pass until the held-out top-1 stops improving.

One pass is one ``harness train`` run of the given settings (e.g. ``epochs=2``: a fresh warm-up, decayed to
zero), started from the pass before it (the first from ``--init``). A run's own curve flattens as its learning
rate reaches zero whether or not the draft could still learn, so the question "has it plateaued?" is put to
whole passes: after each one, its saved weights and the ones it started from are evaluated on the same
held-out samples (``harness heldout``), and the depth-1 gain gets a paired 95% bootstrap interval over those
samples. The draft has plateaued when that gain is not above ``min_gain`` (default zero: the interval reaches
zero or lies below). A positive ``min_gain`` is the smallest gain per pass worth its compute, as ``min_delta`` is
for Keras' early stopping: a pass then counts as improving only when its whole interval lies above it. Depth 1 is
the figure the training goal is stated in; deeper depths are reported beside it.

Each pass trains into ``OUT/pass-NN``, resumable as any run is; a finished pass is not trained again, and every
checkpoint's held-out figures are kept in ``OUT/heldout.csv``, so rerunning the command after an interruption
goes on where it stopped. ``OUT/passes.md`` is the table of passes so far.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.learned import LearnedDrafter
from harness.report.curves import held_out_split, read_config
from harness.report.render import markdown_table
from harness.target import Target
from harness.train import heldout, trainer
from harness.train.data import FeatureData

DEPTHS = 3


def run(method_cls: type[LearnedDrafter], target: Target, data: FeatureData, out: Path,
        config: trainer.TrainConfig, loss_options: dict | None, init: Path | None, max_passes: int,
        min_gain: float = 0.0) -> pd.DataFrame:
    """Train up to ``max_passes`` passes into ``out``, stopping at the first whose paired depth-1 gain over the
    weights it started from is not above ``min_gain``; returns the comparison rows (``heldout.compare``'s)."""
    out.mkdir(parents=True, exist_ok=True)
    _, held_out = data.split(config.holdout, config.seed, config.holdout_from, config.holdout_of)
    chain: list[Path] = []   # the checkpoints measured on this split, oldest first
    results, previous = pd.DataFrame(), init
    for index in range(1, max_passes + 1):
        folder = out / f"pass-{index:02d}"
        if not _finished(folder):
            trainer.train(method_cls, target, data, folder, config, loss_options, init=previous)
            if not _finished(folder):
                print(f"{folder} stopped at its time budget: rerun the same command to resume it")
                break
        if index == 1 and init is not None and (init / "config.json").is_file() and \
                held_out_split(read_config(init)) == held_out_split(read_config(folder)):
            chain.append(init)   # trained and evaluated on the same split: the first pass's gain is measured too
        chain.append(folder)
        previous = folder
        results = heldout.compare(_measured(chain, out, target, data, held_out))
        _write(out, results, min_gain)
        last = results[(results.checkpoint == str(folder)) & (results.depth == 1)].iloc[0]
        if len(chain) > 1 and not last.gain_lo > min_gain:
            print(f"plateau: {folder.name}'s depth-1 gain {last.gain:+.3f} [{last.gain_lo:+.3f}, {last.gain_hi:+.3f}] "
                  f"is not above {min_gain:+.3f}")
            break
    else:
        print(f"no plateau within {max_passes} passes")
    return results


def _finished(folder: Path) -> bool:
    """A pass is done when its final record exists and says it was not cut by the time budget."""
    if not (folder / "config.json").is_file():
        return False
    return (read_config(folder).get("training") or {}).get("stopped_by") != "budget"


def _measured(chain: list[Path], out: Path, target: Target, data: FeatureData, held_out: list[int]) -> list:
    """Each checkpoint's hits and positions per held-out sample and depth, as ``heldout.compare`` takes them;
    each is evaluated once and kept in ``out/heldout.csv`` (the layout ``harness heldout`` writes)."""
    path = out / "heldout.csv"
    kept = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["checkpoint"])
    for folder in chain:
        if str(folder) not in set(kept.checkpoint):
            frame = heldout.evaluate(folder, read_config(folder), target, data, held_out, DEPTHS)
            kept = pd.concat([kept, frame.assign(checkpoint=str(folder))], ignore_index=True)
            kept.to_csv(path, index=False)
    return [(str(folder), kept[kept.checkpoint == str(folder)].drop(columns="checkpoint").astype(int))
            for folder in chain]


def _write(out: Path, results: pd.DataFrame, min_gain: float) -> None:
    """passes.md: the table ``harness heldout`` writes, each pass paired with the weights it started from."""
    rule = f"A pass improves when its paired depth-1 gain's interval lies above {min_gain:+.3f}."
    table = markdown_table(heldout.table(results, "previous"))
    (out / "passes.md").write_text(f"# Passes in {out}\n\n{rule}\n\n{table}\n")
