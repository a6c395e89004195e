"""MT-bench (Zheng et al., 2023): 80 two-turn questions, 8 categories of 10 (REFERENCE §3.3).

The second turn is asked in the same conversation after the model's own first answer; the runner
does that through the target's chat template.
"""
from __future__ import annotations

from pathlib import Path

from harness.suite import SUITES, Question, Suite
from suites.specbench import MT_BENCH_CATEGORIES, read_questions, select

URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl"


@SUITES.register("mtbench", "mt-bench", "mt_bench")
class MTBench(Suite):
    """MT-bench: 80 questions, two turns each, 8 categories."""

    def __init__(self, data_dir: Path | None = None, categories=None) -> None:
        super().__init__(data_dir)
        self.categories = categories

    def questions(self) -> list[Question]:
        questions = read_questions(self.data_file("mt_bench/question.jsonl", URL), lambda c: "mt_bench")
        return select(questions, self.categories, ("mt_bench",) + MT_BENCH_CATEGORIES)
