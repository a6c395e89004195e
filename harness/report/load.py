"""Find run directories and load their result rows and manifests into one pandas frame.

A run directory is a folder holding ``manifest.json`` (harness.records); a folder given on the
command line that is not one is searched one level down, so ``--results results`` means every run.
``NAME=DIR,DIR`` reports several run directories as one run: one experiment whose suites or temperatures
were run into separate folders (so a paper table gets one row of ours, and its mean, per method).
The report never loads a model: everything it shows comes from these files. A folder that older
runs damaged still loads: unreadable lines and duplicate rows are left out with a note, skipped
questions (rows that say why they could not run) are counted in the notes and kept out of the frame.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness import metrics
from harness.errors import UserError
from harness.records import baseline_of, iter_result_files


@dataclass
class Run:
    name: str                  # unique label in this report (the folder name, made unique)
    path: Path
    manifest: dict
    frame: pd.DataFrame        # one row per answered question (metrics.load_frame, skipped rows left out)
    baseline: str              # the method speedups are measured against (--baseline, else the manifest's)
    notes: list[str] = field(default_factory=list)   # gaps found while loading
    members: tuple[Path, ...] = ()                   # the run directories of a group (NAME=DIR,DIR), else none

    @property
    def where(self) -> str:
        return ", ".join(map(str, self.members)) if self.members else str(self.path)


@dataclass(frozen=True)
class Group:
    """Run directories reported as one run named ``name``."""
    name: str
    paths: tuple[Path, ...]


# A group is one experiment only if its folders ran the same model the same way, and each draft from one checkpoint.
GROUP_AGREES_ON = ("target", "dtype", "device", "seed")


def parse_results(value: str) -> Path | Group:
    """``--results`` value: a folder, or NAME=DIR,DIR,... (a group)."""
    name, sep, rest = value.partition("=")
    if not sep:
        return Path(value)
    paths = tuple(Path(p) for p in rest.split(",") if p)
    if not name or not paths:
        raise UserError(f"--results {value!r}: a group is NAME=DIR,DIR (a name, then run directories)")
    return Group(name, paths)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories among paths: a path with manifest.json, else its children that have one."""
    found: list[Path] = []
    for path in paths:
        if (path / "manifest.json").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.glob("*/manifest.json")))
        else:
            raise UserError(f"{path} does not exist; pass --results with a run directory (one holding manifest.json)")
    if not found:
        raise UserError(f"no run directory (a folder with manifest.json) under {', '.join(map(str, paths))}; "
                        f"run `python -m harness run ...` first or pass --results DIR")
    return list(dict.fromkeys(found))


def _answered(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of questions that ran, the baseline first in each suite and temperature."""
    frame = metrics.answered(frame).copy()
    frame["_order"] = frame.method.ne(frame.baseline)   # the baseline first: every table's reference line
    return frame.sort_values(["suite", "temperature", "_order", "method"], kind="stable").drop(columns="_order")


def _row_notes(frame: pd.DataFrame) -> list[str]:
    """Skipped questions per cell, and rows too old to say which sweep timed them or how busy the machine was."""
    if frame.empty:
        return []
    notes = _skipped_notes(frame[frame.skipped != ""])
    unknown = int(frame.session.eq("").sum())
    if unknown:
        notes.append(f"{unknown} rows record no timing session (written before sessions were recorded), so "
                     f"whether their speedup pairs were timed in one process is unknown")
    clocked = metrics.timed(frame[frame.skipped == ""])
    unmeasured = int(clocked.contended.isna().sum())
    if unmeasured:
        notes.append(f"{unmeasured} rows record no machine load (written before loads were recorded), so whether "
                     f"other processes shared the machine while they were timed is unknown")
    return notes


def _skipped_notes(skipped: pd.DataFrame) -> list[str]:
    """One note per cell with questions that could not run, with their ids and reasons."""
    notes = []
    for (suite, temperature, method), cell in skipped.groupby(["suite", "temperature", "method"], sort=False):
        reasons = "; ".join(f"{qid}: {reason}" for qid, reason in zip(cell.question_id, cell.skipped))
        notes.append(f"{suite} {method} T={temperature:g}: {len(cell)} question(s) skipped, left out of every "
                     f"figure ({reasons})")
    return notes


def _gaps(frame: pd.DataFrame, manifest: dict, baseline: str) -> list[str]:
    """Missing or partial cells: listed but empty, fewer questions than the fullest cell, temperatures not run."""
    notes = [f"sweep {i + 1} ({' '.join(s.get('argv', []))}) ended with status {s.get('status', 'unfinished')}"
             for i, s in enumerate(manifest.get("sweeps", [])) if s.get("status") != "complete"]
    counts = frame.groupby(["suite", "temperature", "method"]).size() if not frame.empty else pd.Series(dtype=int)
    for cell in manifest.get("cells", []):
        if (cell["suite"], cell["temperature"], cell["method"]) not in counts.index:
            notes.append(f"{cell['suite']} {cell['method']} T={cell['temperature']:g}: listed in the manifest "
                         f"but has no rows (interrupted before its first question)")
    if frame.empty:
        return notes
    for (suite, temperature), group in counts.groupby(level=[0, 1]):
        full = group.max()
        for (_, _, method), n in group.items():
            if n < full:
                notes.append(f"{suite} {method} T={temperature:g}: partial, {n} of {full} questions")
        if baseline not in group.index.get_level_values(2):
            notes.append(f"{suite} T={temperature:g}: no {baseline} baseline, so no speedup")
    for suite, cells in frame.groupby("suite"):
        temperatures = set(cells.temperature)
        for method, rows in cells.groupby("method"):
            missing = sorted(temperatures - set(rows.temperature))
            if missing:
                notes.append(f"{suite} {method}: no results at T={', '.join(f'{t:g}' for t in missing)}")
    return notes


def load_runs(paths: list[Path | Group], baseline: str | None = None) -> list[Run]:
    """Every run directory under paths, each group as one run; ``baseline`` overrides each manifest's speedup
    reference."""
    runs: list[Run] = []
    taken: set[str] = set()
    for item in paths:
        if isinstance(item, Group):
            if item.name in taken:
                raise UserError(f"--results {item.name}=...: the name {item.name!r} is taken by another run")
            taken.add(item.name)
            runs.append(_merged(item, [_load(run_dir, run_dir.name, baseline) for run_dir in find_run_dirs(
                list(item.paths))]))
            continue
        for run_dir in find_run_dirs([item]):
            name = run_dir.name if run_dir.name not in taken else f"{run_dir.parent.name}/{run_dir.name}"
            taken.add(name)
            runs.append(_load(run_dir, name, baseline))
    return runs


def _load(run_dir: Path, name: str, baseline: str | None) -> Run:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    damage: list[str] = []
    reference = baseline or baseline_of(manifest)
    every = metrics.load_frame(iter_result_files([run_dir]), damage, reference)
    notes = _gaps(every, manifest, reference) + damage + _row_notes(every)
    frame = _answered(every) if not every.empty else every
    if frame.empty:
        notes.append("no result rows yet")
    else:
        frame.insert(0, "run", name)
    return Run(name, run_dir, manifest, frame, reference, notes)


def _merged(group: Group, parts: list[Run]) -> Run:
    """One run from a group's folders, refused where they are not one experiment: settings in
    GROUP_AGREES_ON, a draft's checkpoint, the baseline or the estimators differ, or two hold the same cell."""
    def refuse(why: str) -> UserError:
        return UserError(f"--results {group.name}=...: {why}; report these folders as separate runs")

    settings = [part.manifest.get("settings", {}) for part in parts]
    for key in GROUP_AGREES_ON:
        seen = {json.dumps(s.get(key)): part.path for s, part in zip(settings, parts)}
        if len(seen) > 1:
            raise refuse(f"they differ in {key} ({', '.join(f'{v} in {p}' for v, p in seen.items())})")
    checkpoints: dict[str, tuple[str, Path]] = {}
    for s, part in zip(settings, parts):
        for method, path in (s.get("checkpoints") or {}).items():
            first = checkpoints.setdefault(method, (path, part.path))
            if first[0] != path:
                raise refuse(f"{method} is {first[0]} in {first[1]} but {path} in {part.path}")
    if len({part.baseline for part in parts}) > 1:
        raise refuse("their baselines differ")
    if len({json.dumps(part.manifest.get("estimators"), sort_keys=True) for part in parts}) > 1:
        raise refuse("their estimators differ")
    holder: dict[tuple, Path] = {}
    for part in parts:
        if part.frame.empty:
            continue
        for cell in part.frame[["suite", "temperature", "method"]].drop_duplicates().itertuples(index=False):
            if holder.setdefault(tuple(cell), part.path) != part.path:
                raise refuse(f"{part.path} and {holder[tuple(cell)]} both hold {cell.suite} {cell.method} "
                             f"T={cell.temperature:g}")
    merged_settings = {}
    for key in dict.fromkeys(k for s in settings for k in s):
        values = {json.dumps(s.get(key), sort_keys=True): s.get(key) for s in settings}
        merged_settings[key] = next(iter(values.values())) if len(values) == 1 else "; ".join(
            f"{s.get(key)} ({part.path.name})" for s, part in zip(settings, parts))
    merged_settings["checkpoints"] = {m: path for m, (path, _) in checkpoints.items()}
    manifest = {"settings": merged_settings, "estimators": parts[0].manifest.get("estimators", {}),
                "cells": [c for p in parts for c in p.manifest.get("cells", [])],
                "sweeps": [s for p in parts for s in p.manifest.get("sweeps", [])]}
    frames = [part.frame.assign(run=group.name) for part in parts if not part.frame.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    notes = [f"{part.path.name}: {note}" for part in parts for note in part.notes]
    return Run(group.name, parts[0].path, manifest, frame, parts[0].baseline, notes,
               tuple(part.path for part in parts))


def combined(runs: list[Run]) -> pd.DataFrame:
    """All runs' questions in one frame, with a ``run`` column; empty runs contribute nothing."""
    frames = [run.frame for run in runs if not run.frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
