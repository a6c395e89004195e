"""Spec-Bench (Xia et al., 2024): 480 questions in six tasks, 80 each (REFERENCE §3.2).

The file has no category named ``mt_bench``: question_id 81-160 carry the eight MT-bench categories
and form the task ``mt_bench`` (two turns each); the other tasks are translation, summarization, qa,
math_reasoning and rag. ``categories`` selects tasks or fine categories (``mt_bench``, ``writing``).
Spec-Bench is a speed benchmark: it has no score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from harness.errors import UserError
from harness.suite import SUITES, Question, Suite, check_categories, read_numbered_jsonl

URL = "https://raw.githubusercontent.com/hemingkx/Spec-Bench/main/data/spec_bench/question.jsonl"
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
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


def select(questions: list[Question], categories: Sequence[str] | None) -> list[Question]:
    """The questions whose task or category is selected (all when nothing is)."""
    if not categories:
        return questions
    return [q for q in questions if q.task in categories or q.category in categories]


@SUITES.register("specbench", "spec-bench", "spec_bench")
class SpecBench(Suite):
    """Spec-Bench: 480 questions, six tasks (mt_bench, translation, summarization, qa, math_reasoning, rag)."""

    def __init__(self, data_dir: Path | None = None, categories: Sequence[str] | None = None) -> None:
        super().__init__(data_dir)
        check_categories("specbench", categories, TASKS + MT_BENCH_CATEGORIES)
        self.categories = categories

    def questions(self) -> list[Question]:
        path = self.data_file("spec_bench/question.jsonl", URL)
        questions = read_questions(path, lambda c: "mt_bench" if c in MT_BENCH_CATEGORIES else c)
        return select(questions, self.categories)
