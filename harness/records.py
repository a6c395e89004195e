"""Result files: one JSONL file of answer rows per (suite, method, temperature), plus a run manifest.

Rows follow Spec-Bench's answer format (question_id, category, answer_id, model_id, tstamp and
``choices[0]`` with turns, decoding_steps, new_tokens, wall_time, accept_lengths), so Spec-Bench's
own scripts read them, and add the harness fields (method, suite, task, temperature, stage times,
stop reasons, tree sizes, scores). Rows are appended and flushed one question at a time; reading
drops a last line that a killed run left half-written, so a rerun resumes without losing a question.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

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


def answer_file(run_dir: Path, suite: str, method: str, temperature: float) -> Path:
    return run_dir / "answers" / suite / f"{method}-temperature-{temperature:g}.jsonl"


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a result file; a truncated last line is dropped (and cut from the file if repair)."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    rows, good_end = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_end += len(line)
    if good_end < len(raw) and repair:
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    if rows and not raw[:good_end].endswith(b"\n") and repair:
        with open(path, "ab") as handle:
            handle.write(b"\n")
    return rows


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
             scores: dict[str, float], lossless: bool, question_hash: str = "") -> dict:
    """One question's answer row from its per-turn Generations (harness.decode); ``question_hash``
    (Question.text_hash) lets a resume tell whether the question's text has changed since."""
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
    }


# Settings added after runs were first recorded, with the value those runs used: a run directory
# made before a setting existed resumes (and hashes) as if it had been recorded at that value.
LATER_SETTINGS = {"compile": "off", "compile_bucket": 256}


def comparable_settings(settings: dict) -> dict:
    """Settings without the later-added ones that sit at the value older runs implicitly used."""
    return {k: v for k, v in settings.items() if not (k in LATER_SETTINGS and LATER_SETTINGS[k] == v)}


class Manifest:
    """results/<run>/manifest.json: settings, environment and estimators, written first, updated per sweep."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path = path
        self.data = data

    @classmethod
    def open(cls, run_dir: Path, settings: dict, env: dict, argv: list[str]) -> "Manifest":
        path = run_dir / "manifest.json"
        if path.is_file():
            data = json.loads(path.read_text())
            before, now = comparable_settings(data.get("settings", {})), comparable_settings(settings)
            if before != now:
                changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
                raise UserError(f"{run_dir} holds results made with other settings ({', '.join(changed)}); "
                                f"choose another --out or repeat the original settings")
            data["sweeps"].append({"argv": argv, "started": time.time(), "env": env})
        else:
            data = {"schema_version": SCHEMA_VERSION, "settings": settings, "estimators": ESTIMATORS,
                    "cells": [], "sweeps": [{"argv": argv, "started": time.time(), "env": env}]}
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
