"""Result files: one JSONL file of answer rows per (suite, method, temperature), plus a run manifest.

Rows follow Spec-Bench's answer format (question_id, category, answer_id, model_id, tstamp and
``choices[0]`` with turns, decoding_steps, new_tokens, wall_time, accept_lengths), so Spec-Bench's
own scripts read them, and add the harness fields (method, suite, task, temperature, stage times,
stop reasons, tree sizes, scores, the timing session). Rows are appended and flushed one question at
a time by the one run that holds the run directory's lock; reading drops a last line that a killed run
left half-written, so a rerun resumes without losing a question, and sets any other damage aside.
A question that cannot run is a row too, with ``skipped`` giving the reason and empty ``choices``.
``Row`` is the typed form every writer builds and every reader (metrics, report) reads; the manifest
names the run's speedup baseline (``baseline``), so no reader assumes one.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.errors import UserError

SCHEMA_VERSION = 1

ESTIMATORS = {
    "tau": "pooled over steps: sum(accept_lengths) / sum(decoding_steps), bonus token included; "
           "the prefill forward counts as a step that commits one token",
    "speedup": "ratio_of_mean_tps: mean over questions of (new_tokens / wall_time), method over vanilla "
               "on the same questions, same run and stack (Spec-Bench speed.py)",
    "baseline_impl": "same_kernel_loop (methods/vanilla.py through the shared decode loop)",
    "token_count_method": "generated_ids",
    "timer_scope": "full_call (prefill + drafting + verification; tokenisation excluded)",
    "paired": "paired percentile bootstrap over questions: both methods' rows on the same resampled question ids "
              "(turns belong to their question), 95% interval of the difference",
    "contention": "each row's load record (harness/machine_load.py): contended when other processes kept more "
                  "than 10% of the cores busy, or the 1-minute load average exceeded cores + 0.5",
}

# The method every speedup is measured against unless the manifest names another (``baseline``).
DEFAULT_BASELINE = "vanilla"
REPLAY_SUFFIX = "-replay"   # a replayed cell's label: <method>-replay (harness/replay.py)


LOCK_FILE = "run.lock"


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory for a whole sweep: two runs writing one folder would
    answer every question twice and overwrite each other's manifest. The kernel drops the lock when
    the process ends, however it ends, so a killed run never leaves the folder locked."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file; pass a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UserError(f"{run_dir} is in use by another run (pid {holder}); wait for it to finish "
                            f"or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def new_session() -> str:
    """An id for the rows one sweep times: rows of different sessions ran in different processes (or
    sweeps), so their wall times were measured under different conditions."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def answer_file(run_dir: Path, suite: str, method: str, temperature: float) -> Path:
    return run_dir / "answers" / suite / f"{method}-temperature-{temperature:g}.jsonl"


@dataclass
class FileRows:
    """What a result file holds: its intact rows, and what reading it had to leave out."""

    rows: list[dict]                                     # intact rows, the first one of each question
    bad_lines: list[int] = field(default_factory=list)   # 1-based numbers of complete lines that did not parse
    torn_tail: bool = False                              # a last line cut short (a run killed mid-write)
    duplicates: int = 0                                  # later rows for a question an earlier row answered

    def notes(self, path: Path) -> list[str]:
        """One line per kind of damage, naming the file."""
        notes = []
        if self.bad_lines:
            notes.append(f"{path}: {len(self.bad_lines)} unreadable line(s) left out "
                         f"(line {', '.join(map(str, self.bad_lines))})")
        if self.duplicates:
            notes.append(f"{path}: {self.duplicates} duplicate row(s) of questions answered earlier in the file "
                         f"(two runs wrote into this folder?); the first row of each question is used")
        return notes


ROW_FIELDS = ("question_id", "category", "method", "suite", "temperature", "choices")
CHOICE_KEYS = ("turns", "decoding_steps", "new_tokens", "wall_time", "accept_lengths")


def _intact(row: object) -> bool:
    """A row every reader can use: valid JSON is not enough when a byte inside a key was damaged."""
    if not isinstance(row, dict) or any(key not in row for key in ROW_FIELDS):
        return False
    choices = row["choices"]
    return (isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict)
            and all(isinstance(choices[0].get(key), list) for key in CHOICE_KEYS))


def scan_rows(path: Path) -> FileRows:
    """Every intact row of a result file in file order (the first of each question), and its damage."""
    return _scan(path)[0]


def _scan(path: Path) -> tuple[FileRows, list[bytes], list[bytes]]:
    """(rows, the intact lines as written, the unreadable lines). Only an unparsable last line without
    its newline is the torn write of a killed run; any other line that does not parse is damage,
    reported, and never stops the rows after it from loading."""
    if not path.is_file():
        return FileRows([]), [], []
    *complete, tail = path.read_bytes().split(b"\n")
    result, intact, bad, seen = FileRows([]), [], [], set()
    for number, line in enumerate(complete + [tail], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:       # JSONDecodeError and UnicodeDecodeError
            row = None
        if not _intact(row):
            if number == len(complete) + 1:
                result.torn_tail = True
            else:
                result.bad_lines.append(number)
                bad.append(line)
            continue
        intact.append(line)
        if str(row["question_id"]) in seen:
            result.duplicates += 1
            continue
        seen.add(str(row["question_id"]))
        result.rows.append(row)
    return result, intact, bad


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """Intact rows of a result file, the first of each question. With repair (before a run appends),
    a torn last line is cut, unreadable lines move to ``<file>.bad-lines`` and a note says so."""
    found, intact, bad = _scan(path)
    if not repair or not path.is_file():
        return found.rows
    if bad:
        side = path.with_name(path.name + ".bad-lines")
        with open(side, "ab") as handle:
            handle.writelines(line + b"\n" for line in bad)
        print(f"note: {path}: moved {len(bad)} unreadable line(s) (line {', '.join(map(str, found.bad_lines))}) "
              f"to {side.name}; a question left without an intact row runs again", file=sys.stderr)
    if found.duplicates:
        print(f"note: {found.notes(path)[-1]}", file=sys.stderr)
    cleaned = b"".join(line + b"\n" for line in intact)
    if cleaned != path.read_bytes():       # a torn tail, bad lines, blank lines or no final newline
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(cleaned)
        tmp.replace(path)
    return found.rows


class RowWriter:
    """Appends one JSON row per line and flushes it, so a killed run loses at most the question in flight."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Harness fields a row may leave out (older rows, skipped rows): None here means "not in the row".
OPTIONAL_KEYS = ("task", "model_id", "answer_id", "tstamp", "lossless", "prefill_time", "draft_time", "verify_time",
                 "tree_nodes", "stop_reasons", "token_ids", "scores", "question_hash", "timing_session", "worker",
                 "load")


@dataclass
class Row:
    """One question's answer row, typed. ``to_json`` writes Spec-Bench's layout (the per-turn lists under
    ``choices[0]``) plus the harness fields that are set; ``from_json`` reads any intact row, older ones
    included, and keeps fields it does not know in ``extra`` so a round trip loses nothing."""

    question_id: Any
    category: str
    method: str
    suite: str
    temperature: float
    turns: list[str] = field(default_factory=list)
    decoding_steps: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    accept_lengths: list[int] = field(default_factory=list)     # every step of every turn, in order
    task: str | None = None
    model_id: str | None = None
    answer_id: str | None = None
    tstamp: float | None = None
    lossless: bool | None = None
    prefill_time: list[float] | None = None
    draft_time: list[float] | None = None
    verify_time: list[float] | None = None
    tree_nodes: list[int] | None = None
    stop_reasons: list[str] | None = None
    token_ids: list[list[int]] | None = None
    scores: dict[str, float] | None = None
    question_hash: str | None = None
    timing_session: str | None = None     # the sweep that timed the row (records.new_session)
    worker: dict | None = None            # host, pid, device and device type (harness/env.py)
    load: dict | None = None              # the machine's load while the row was timed (harness/machine_load.py)
    skipped: str = ""                     # why the question could not run; "" when it ran
    replayed: bool = False                # accept lengths replayed, not decoded: no wall time to compare
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        choice = {"index": 0, **{key: getattr(self, key) for key in CHOICE_KEYS}}
        out = {"question_id": self.question_id, "category": self.category, "choices": [choice],
               "method": self.method, "suite": self.suite, "temperature": self.temperature}
        out.update({key: getattr(self, key) for key in OPTIONAL_KEYS if getattr(self, key) is not None})
        if self.skipped:
            out["skipped"] = self.skipped
        if self.replayed:
            out["replayed"] = True
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> "Row":
        choice = data["choices"][0]
        known = set(ROW_FIELDS) | set(OPTIONAL_KEYS) | {"skipped", "replayed"}
        return cls(question_id=data["question_id"], category=data["category"], method=data["method"],
                   suite=data["suite"], temperature=data["temperature"],
                   **{key: list(choice[key]) for key in CHOICE_KEYS},
                   **{key: data[key] for key in OPTIONAL_KEYS if key in data},
                   skipped=data.get("skipped") or "", replayed=bool(data.get("replayed", False)),
                   extra={k: v for k, v in data.items() if k not in known})

    @property
    def device_type(self) -> str:
        return (self.worker or {}).get("device_type", "")


def make_row(*, question_id: Any, category: str, task: str, model_id: str, method: str, suite: str,
             temperature: float, turns: list[str], generations: list, wall_times: list[float],
             scores: dict[str, float], lossless: bool, session: str, question_hash: str = "") -> Row:
    """One question's answer row from its per-turn Generations (harness.decode); ``session`` names the sweep
    that timed it; ``question_hash`` (Question.text_hash) lets a resume tell whether the question's text has
    changed since."""
    return Row(
        question_id=question_id, category=category, method=method, suite=suite, temperature=temperature,
        turns=turns, decoding_steps=[len(g.accept_lengths) for g in generations],
        new_tokens=[len(g.tokens) for g in generations], wall_time=wall_times,
        accept_lengths=[a for g in generations for a in g.accept_lengths],
        task=task, model_id=model_id, answer_id=uuid.uuid4().hex, tstamp=time.time(), lossless=lossless,
        prefill_time=[g.prefill_time for g in generations], draft_time=[g.draft_time for g in generations],
        verify_time=[g.verify_time for g in generations], tree_nodes=[sum(g.tree_sizes) for g in generations],
        stop_reasons=[g.stop_reason for g in generations], token_ids=[g.tokens for g in generations],
        scores=scores, question_hash=question_hash, timing_session=session)


def make_skipped_row(*, question_id: Any, category: str, task: str, model_id: str, method: str, suite: str,
                     temperature: float, reason: str, session: str, question_hash: str = "") -> Row:
    """The row of a question that cannot run: it counts as done on a rerun and reports count it apart."""
    return Row(question_id=question_id, category=category, method=method, suite=suite, temperature=temperature,
               task=task, model_id=model_id, answer_id=uuid.uuid4().hex, tstamp=time.time(), skipped=reason,
               timing_session=session, question_hash=question_hash)


# Settings added after runs were first recorded, with the value those runs used: a run directory
# made before a setting existed resumes (and hashes) as if it had been recorded at that value.
LATER_SETTINGS = {"compile": "off", "compile_bucket": 256, "device_map": None}
PER_METHOD_SETTINGS = ("options", "checkpoints")   # keyed by method; each cell records its own (Manifest.open)
CELL_IDENTITY = ("options", "checkpoint", "lossless")   # what a cell's rows were made with


def comparable_settings(settings: dict) -> dict:
    """Settings without the later-added ones that sit at the value older runs implicitly used."""
    return {k: v for k, v in settings.items() if not (k in LATER_SETTINGS and LATER_SETTINGS[k] == v)}


def _shared(settings: dict) -> dict:
    return {k: v for k, v in comparable_settings(settings).items() if k not in PER_METHOD_SETTINGS}


def _check_cell(run_dir: Path, cells: list[dict], cell: dict) -> None:
    """Refuses a cell whose rows in the folder were made with other options, checkpoint or acceptance rule."""
    for old in cells:
        if (old["suite"], old["method"], old["temperature"]) != (cell["suite"], cell["method"], cell["temperature"]):
            continue
        changed = [k for k in CELL_IDENTITY if old.get(k) != cell.get(k)]
        if changed:
            what = "; ".join(f"{k} {old.get(k)!r} there, {cell.get(k)!r} now" for k in changed)
            raise UserError(f"{run_dir}: {cell['method']} on {cell['suite']} at T={cell['temperature']:g} was run "
                            f"with other settings ({what}); choose another --out or repeat them")


class Manifest:
    """results/<run>/manifest.json: settings, environment and estimators, written first, updated per sweep."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path = path
        self.data = data

    @classmethod
    def open(cls, run_dir: Path, settings: dict, env: dict, argv: list[str], session: str = "",
             baseline: str = DEFAULT_BASELINE, cells: Iterable[dict] = ()) -> "Manifest":
        """The folder's manifest with this sweep added, or a refusal before anything is written.

        Shared settings must repeat exactly. Options and checkpoints are per method: a sweep may add methods
        (with their own checkpoints) to a folder, but each of its ``cells`` already in the folder must come
        with the options, checkpoint and lossless flag its rows were made with."""
        path = run_dir / "manifest.json"
        sweep = {"argv": argv, "started": time.time(), "env": env, "session": session}
        cells = list(cells)
        if path.is_file():
            data = json.loads(path.read_text())
            before, now = _shared(data.get("settings", {})), _shared(settings)
            if before != now:
                changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
                raise UserError(f"{run_dir} holds results made with other settings ({', '.join(changed)}); "
                                f"choose another --out or repeat the original settings")
            for cell in cells:
                _check_cell(run_dir, data["cells"], cell)
            for key in PER_METHOD_SETTINGS:
                data["settings"][key] = {**data["settings"].get(key, {}), **settings.get(key, {})}
            data["sweeps"].append(sweep)
            data.setdefault("baseline", baseline)
        else:
            data = {"schema_version": SCHEMA_VERSION, "settings": settings, "estimators": ESTIMATORS,
                    "baseline": baseline, "cells": [], "sweeps": [sweep]}
        data["cells"] += [cell for cell in cells if cell not in data["cells"]]
        manifest = cls(path, data)
        manifest.save()
        return manifest

    def add_cell_load(self, cell: dict, load: dict) -> None:
        """The machine's load over one cell of this sweep (harness/machine_load.py)."""
        self.data["sweeps"][-1].setdefault("cell_load", []).append({**cell, **load})
        self.save()

    def finish_sweep(self, status: str) -> None:
        self.data["sweeps"][-1].update(finished=time.time(), status=status)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False))
        tmp.replace(self.path)


def baseline_of(manifest: dict) -> str:
    """The method a run's speedups are measured against; runs recorded before it was named used vanilla."""
    return manifest.get("baseline") or DEFAULT_BASELINE


def iter_result_files(run_dirs: Iterable[Path]) -> Iterable[Path]:
    for run_dir in run_dirs:
        yield from sorted(Path(run_dir).glob("answers/*/*.jsonl"))
