"""Spec-Bench (Xia et al., 2024): 480 questions in six tasks, 80 each (REFERENCE §3.2).

The file has no category named ``mt_bench``: question_id 81-160 carry the eight MT-bench categories
and form the task ``mt_bench`` (two turns each); the other tasks are translation, summarization, qa,
math_reasoning and rag. ``categories`` selects tasks or fine categories.
"""
from __future__ import annotations

from pathlib import Path

from harness.errors import UserError
from harness.suite import SUITES, Question, Suite, read_jsonl

URL = "https://raw.githubusercontent.com/hemingkx/Spec-Bench/main/data/spec_bench/question.jsonl"
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


def read_questions(path: Path, task_of) -> list[Question]:
    """Questions of a FastChat-style question.jsonl; a record missing a field is named by file and line."""
    questions = []
    for line, record in enumerate(read_jsonl(path), 1):
        missing = [f for f in ("question_id", "category", "turns") if f not in record]
        if missing:
            raise UserError(f"{path}:{line}: missing field {', '.join(missing)}")
        questions.append(Question(id=str(record["question_id"]), category=record["category"],
                                  turns=tuple(record["turns"]), reference=record.get("reference"),
                                  task=task_of(record["category"])))
    return questions


def select(questions: list[Question], categories, valid: tuple[str, ...]) -> list[Question]:
    if not categories:
        return questions
    unknown = sorted(set(categories) - set(valid))
    if unknown:
        raise UserError(f"unknown category {', '.join(unknown)} (valid: {', '.join(valid)})")
    return [q for q in questions if q.task in categories or q.category in categories]


@SUITES.register("specbench", "spec-bench", "spec_bench")
class SpecBench(Suite):
    """Spec-Bench: 480 questions, six tasks (mt_bench, translation, summarization, qa, math_reasoning, rag)."""

    def __init__(self, data_dir: Path | None = None, categories=None) -> None:
        super().__init__(data_dir)
        self.categories = categories

    def questions(self) -> list[Question]:
        path = self.data_file("spec_bench/question.jsonl", URL)
        questions = read_questions(path, lambda c: "mt_bench" if c in MT_BENCH_CATEGORIES else c)
        return select(questions, self.categories, TASKS + MT_BENCH_CATEGORIES)
