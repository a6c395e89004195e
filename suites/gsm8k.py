"""GSM8K (Cobbe et al., 2021): grade-school math; scored by final-answer exact match (docs/reference.md §3.4).

Variants: ``full`` (the 1319 test questions, registered as ``gsm8k``) and ``eagle80`` (the 80-question
subset EAGLE and HASS report as "GSM8K", rebuilt from the test file by line number; registered as
``gsm8k_eagle80``). Question ids are 0-based line numbers of test.jsonl in both. The reference's
final answer follows ``####``; the model's is the last number in its answer (thousands commas,
``$``, a trailing period and trailing zeros ignored: ``$1,000.`` == ``1000`` and ``5.0`` == ``5``).
"""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from harness.errors import UserError
from harness.suite import SUITES, Question, Suite, read_numbered_jsonl

# Pinned to a commit; a download must have this sha256.
URL = "https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/test.jsonl"
SHA256 = "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"
VARIANTS = ("full", "eagle80")
# 0-based lines of test.jsonl in EAGLE question_id order (docs/reference.md §3.4).
EAGLE80 = (30, 754, 429, 1010, 1284, 953, 751, 954, 705, 993, 1029, 917, 20, 1057, 138, 127, 60, 387, 1163, 632,
           457, 48, 618, 892, 368, 615, 1165, 184, 1139, 1220, 1059, 130, 671, 1269, 936, 831, 582, 777, 1276, 230,
           790, 556, 237, 180, 1272, 631, 967, 23, 455, 913, 595, 1045, 80, 233, 231, 553, 82, 958, 945, 131, 473,
           797, 511, 1181, 1120, 1104, 86, 509, 756, 1124, 510, 306, 934, 142, 134, 636, 350, 1153, 1016, 719)
# An optional sign (not the hyphen of "10-15"), an optional $, digits with or without thousands commas,
# an optional decimal part.
NUMBER = re.compile(r"(?:(?<![\w)])-\$?|\$-?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def normalize(number: str) -> Fraction | None:
    """'1,000.50' -> Fraction(2001, 2); None when the text is not a number."""
    cleaned = number.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def reference_answer(answer: str) -> Fraction | None:
    """The number after the reference solution's ``####``."""
    _, sep, final = answer.rpartition("####")
    return normalize(final) if sep else None


def predicted_answer(text: str) -> Fraction | None:
    """The last number in a model's answer."""
    numbers = NUMBER.findall(text)
    return normalize(numbers[-1]) if numbers else None


@SUITES.register("gsm8k")
class GSM8K(Suite):
    """GSM8K: 1319 test questions (variant eagle80: EAGLE's 80), final-answer accuracy."""

    def __init__(self, data_dir: Path | None = None, variant: str = "full") -> None:
        super().__init__(data_dir)
        if variant not in VARIANTS:
            raise UserError(f"unknown gsm8k variant {variant!r} (valid: {', '.join(VARIANTS)})")
        self.variant = variant

    def questions(self) -> list[Question]:
        path = self.data_file("gsm8k/test.jsonl", URL, SHA256)
        questions = []
        for line, record in read_numbered_jsonl(path):
            missing = [f for f in ("question", "answer") if f not in record]
            if missing:
                raise UserError(f"{path}:{line}: missing field {', '.join(missing)}")
            questions.append(Question(id=str(line - 1), category="math", turns=(record["question"],),
                                      reference=record["answer"], task="gsm8k"))
        if self.variant == "full":
            return questions
        by_id = {q.id: q for q in questions}
        missing = [str(i) for i in EAGLE80 if str(i) not in by_id]
        if missing:
            raise UserError(f"{path}: lacks line {int(missing[0]) + 1}; the eagle80 subset needs the 1319 test records")
        return [by_id[str(i)] for i in EAGLE80]

    def score(self, question: Question, answers: list[str]) -> dict[str, float]:
        expected = reference_answer(question.reference)
        return {"accuracy": float(expected is not None and predicted_answer(answers[-1]) == expected)}


@SUITES.register("gsm8k_eagle80", "gsm8k-eagle80")
class GSM8KEagle80(GSM8K):
    """GSM8K, EAGLE/HASS's 80-question subset (question ids are test.jsonl line numbers)."""

    def __init__(self, data_dir: Path | None = None) -> None:
        super().__init__(data_dir, variant="eagle80")
