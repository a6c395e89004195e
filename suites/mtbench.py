"""MT-bench (Zheng et al., 2023): 80 two-turn questions, 8 categories of 10 (docs/reference.md §3.3).

Both turns are yielded; the runner asks the second in the same conversation after the model's own
first answer, through the target's chat template. Quality judging (GPT-4) is out of scope: no score.
The same 80 questions are Spec-Bench's ids 81-160; do not count them twice.
"""
from __future__ import annotations

from harness.suite import SUITES, Question, Suite
from suites.specbench import read_questions

# Pinned to a commit; a download must have this sha256.
URL = "https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data/mt_bench/question.jsonl"
SHA256 = "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"


@SUITES.register("mtbench", "mt-bench", "mt_bench")
class MTBench(Suite):
    """MT-bench: 80 questions, two turns each, 8 categories."""

    def questions(self) -> list[Question]:
        return read_questions(self.data_file("mt_bench/question.jsonl", URL, SHA256), lambda c: "mt_bench")
