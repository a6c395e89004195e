"""MT-bench (Zheng et al., 2023): 80 two-turn questions, 8 categories of 10 (docs/reference.md §3.3).

Both turns are yielded; the runner asks the second in the same conversation after the model's own
first answer, through the target's chat template. Quality judging (GPT-4) is out of scope: no score.
The same 80 questions are Spec-Bench's ids 81-160; do not count them twice.
"""
from __future__ import annotations

from harness.suite import SUITES, Question, Suite
from suites.specbench import read_questions

URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl"


@SUITES.register("mtbench", "mt-bench", "mt_bench")
class MTBench(Suite):
    """MT-bench: 80 questions, two turns each, 8 categories."""

    def questions(self) -> list[Question]:
        return read_questions(self.data_file("mt_bench/question.jsonl", URL), lambda c: "mt_bench")
