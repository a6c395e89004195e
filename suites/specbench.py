"""Spec-Bench (Xia et al., 2024): 480 questions in six tasks, 80 each (docs/reference.md §3.2).

The file has no category named ``mt_bench``: question_id 81-160 carry the eight MT-bench categories
and form the task ``mt_bench`` (two turns each); the other tasks are translation, summarization, qa,
math_reasoning and rag. ``--categories`` selects tasks or fine categories (``mt_bench``, ``writing``).
Spec-Bench is a speed benchmark: it has no score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.errors import UserError
from harness.suite import SUITES, Question, Suite, read_numbered_jsonl

# Pinned to a commit; a download must have this sha256.
URL = "https://raw.githubusercontent.com/hemingkx/Spec-Bench/fd2c1cd7d2201ef71db4c5f4e455008f017967bf/data/spec_bench/question.jsonl"
SHA256 = "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04"
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
FIELDS = ("question_id", "category", "turns")


def read_questions(path: Path, task_of: Callable[[str], str]) -> list[Question]:
    """Questions of a FastChat-style question.jsonl; a record missing a field is named by file and line."""
    questions = []
    for line, record in read_numbered_jsonl(path):
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise UserError(f"{path}:{line}: missing field {', '.join(missing)}")
        if not isinstance(record["turns"], list) or not all(isinstance(t, str) for t in record["turns"]):
            raise UserError(f"{path}:{line}: field turns must be a list of strings")
        questions.append(Question(id=str(record["question_id"]), category=record["category"],
                                  turns=tuple(record["turns"]), reference=record.get("reference"),
                                  task=task_of(record["category"])))
    return questions


@SUITES.register("specbench", "spec-bench", "spec_bench")
class SpecBench(Suite):
    """Spec-Bench: 480 questions, six tasks (mt_bench, translation, summarization, qa, math_reasoning, rag)."""

    def questions(self) -> list[Question]:
        path = self.data_file("spec_bench/question.jsonl", URL, SHA256)
        return read_questions(path, lambda c: "mt_bench" if c in MT_BENCH_CATEGORIES else c)
