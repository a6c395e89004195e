"""Result files: one JSONL file of answer rows per (suite, method, temperature), plus a run manifest.

Rows follow Spec-Bench's answer format (question_id, category, answer_id, model_id, tstamp and
``choices[0]`` with turns, decoding_steps, new_tokens, wall_time, accept_lengths), so Spec-Bench's
own scripts read them, and add the harness fields (method, suite, task, temperature, stage times,
stop reasons, tree sizes, scores, the timing session). Rows are appended and flushed one question at
a time by the one run that holds the run directory's lock; reading drops a last line that a killed run
left half-written, so a rerun resumes without losing a question, and sets any other damage aside.
A question that cannot run is a row too, with ``skipped`` giving the reason and empty ``choices``.
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
}


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
CHOICE_FIELDS = ("turns", "decoding_steps", "new_tokens", "wall_time", "accept_lengths")


def _intact(row: object) -> bool:
    """A row every reader can use: valid JSON is not enough when a byte inside a key was damaged."""
    if not isinstance(row, dict) or any(key not in row for key in ROW_FIELDS):
        return False
    choices = row["choices"]
    return (isinstance(choices, list) and bool(choices) and isinstance(choices[0], dict)
            and all(isinstance(choices[0].get(key), list) for key in CHOICE_FIELDS))


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


def make_row(*, question_id: Any, category: str, task: str, model_id: str, method: str, suite: str,
             temperature: float, turns: list[str], generations: list, wall_times: list[float],
             scores: dict[str, float], lossless: bool, session: str, question_hash: str = "") -> dict:
    """One question's answer row from its per-turn Generations (harness.decode); ``session`` names the sweep
    that timed it; ``question_hash`` (Question.text_hash) lets a resume tell whether the question's text has
    changed since."""
    choice = {
        "index": 0,
        "turns": turns,
        "decoding_steps": [len(g.accept_lengths) for g in generations],
        "new_tokens": [len(g.tokens) for g in generations],
        "wall_time": wall_times,
        "accept_lengths": [a for g in generations for a in g.accept_lengths],
    }
    return {
        "question_id": question_id,
        "category": category,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "choices": [choice],
        "tstamp": time.time(),
        "method": method,
        "suite": suite,
        "task": task,
        "temperature": temperature,
        "lossless": lossless,
        "prefill_time": [g.prefill_time for g in generations],
        "draft_time": [g.draft_time for g in generations],
        "verify_time": [g.verify_time for g in generations],
        "tree_nodes": [sum(g.tree_sizes) for g in generations],
        "stop_reasons": [g.stop_reason for g in generations],
        "token_ids": [g.tokens for g in generations],
        "scores": scores,
        "question_hash": question_hash,
        "timing_session": session,
    }


def make_skipped_row(*, question_id: Any, category: str, task: str, model_id: str, method: str, suite: str,
                     temperature: float, reason: str, session: str, question_hash: str = "") -> dict:
    """The row of a question that cannot run: it counts as done on a rerun and reports count it apart."""
    choice = {"index": 0, "turns": [], "decoding_steps": [], "new_tokens": [], "wall_time": [], "accept_lengths": []}
    return {"question_id": question_id, "category": category, "answer_id": uuid.uuid4().hex, "model_id": model_id,
            "choices": [choice], "tstamp": time.time(), "method": method, "suite": suite, "task": task,
            "temperature": temperature, "skipped": reason, "timing_session": session,
            "question_hash": question_hash}


# Settings added after runs were first recorded, with the value those runs used: a run directory
# made before a setting existed resumes (and hashes) as if it had been recorded at that value.
LATER_SETTINGS = {"compile": "off", "compile_bucket": 256, "device_map": None}


def comparable_settings(settings: dict) -> dict:
    """Settings without the later-added ones that sit at the value older runs implicitly used."""
    return {k: v for k, v in settings.items() if not (k in LATER_SETTINGS and LATER_SETTINGS[k] == v)}


class Manifest:
    """results/<run>/manifest.json: settings, environment and estimators, written first, updated per sweep."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path = path
        self.data = data

    @classmethod
    def open(cls, run_dir: Path, settings: dict, env: dict, argv: list[str], session: str = "") -> "Manifest":
        path = run_dir / "manifest.json"
        sweep = {"argv": argv, "started": time.time(), "env": env, "session": session}
        if path.is_file():
            data = json.loads(path.read_text())
            before, now = comparable_settings(data.get("settings", {})), comparable_settings(settings)
            if before != now:
                changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
                raise UserError(f"{run_dir} holds results made with other settings ({', '.join(changed)}); "
                                f"choose another --out or repeat the original settings")
            data["sweeps"].append(sweep)
        else:
            data = {"schema_version": SCHEMA_VERSION, "settings": settings, "estimators": ESTIMATORS,
                    "cells": [], "sweeps": [sweep]}
        manifest = cls(path, data)
        manifest.save()
        return manifest

    def add_cell(self, cell: dict) -> None:
        if cell not in self.data["cells"]:
            self.data["cells"].append(cell)
            self.save()

    def finish_sweep(self, status: str) -> None:
        self.data["sweeps"][-1].update(finished=time.time(), status=status)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False))
        tmp.replace(self.path)


def iter_result_files(run_dirs: Iterable[Path]) -> Iterable[Path]:
    for run_dir in run_dirs:
        yield from sorted(Path(run_dir).glob("answers/*/*.jsonl"))
