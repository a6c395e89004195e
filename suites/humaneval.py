"""HumanEval (Chen et al., 2021): 164 problems, prompted as code completion, scored by pass@1 (docs/reference.md §3.5).

The turn is "Complete the code I provided." followed directly by the problem's prompt, as in the
EAGLE-family evaluation sets. Scoring executes the answer against the problem's tests
(``check(entry_point)``, the entry point's return values held to plain types) in harness.sandbox,
so the runner scores it only with the explicit opt-in ``--allow-code-exec`` (``unsafe``). The code
of a chat answer is its first fenced block if it has one (a block cut off by the token limit counts
too), else the whole answer. Code that defines the entry point replaces the prompt's stub: it runs
after the prompt, so the prompt's imports and helper functions (``poly``, ``encode_cyclic``, ...)
exist. Anything else is the body that continues the prompt.
"""
from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError
from harness.sandbox import Program, run_python
from harness.suite import SUITES, Question, Suite, read_numbered_jsonl

# Pinned to a commit; a download must have this sha256.
URL = "https://raw.githubusercontent.com/openai/human-eval/6d43fb980f9fee3c892a914eda09951f772ad10d/data/HumanEval.jsonl.gz"
SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
INSTRUCTION = "Complete the code I provided."
FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def extract_code(answer: str) -> str:
    """The first fenced code block of a chat answer, else the answer itself."""
    fenced = FENCE.search(answer)
    return fenced.group(1) if fenced else answer


def program(problem: dict, answer: str) -> Program:
    """The program that passes iff the answer solves the problem: the tests are compiled apart from the
    answer (which cannot swallow them) and see the entry point only through strict_returns."""
    code = extract_code(answer)
    defines_entry_point = re.search(rf"^def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE)
    body = problem["prompt"] + ("\n\n" if defines_entry_point else "") + code
    return Program(f"{body}\n", f"{problem['test']}\n\ncheck(strict_returns({problem['entry_point']}))\n")


@SUITES.register("humaneval", "human-eval")
class HumanEval(Suite):
    """HumanEval: 164 Python problems, pass@1 in a sandbox (needs --allow-code-exec to score)."""

    unsafe = True

    def __init__(self, data_dir: Path | None = None, timeout_s: float = 10.0, memory_mb: int = 1024) -> None:
        super().__init__(data_dir)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    def questions(self) -> list[Question]:
        path = self.data_file("humaneval/HumanEval.jsonl.gz", URL, SHA256)
        questions = []
        for line, record in read_numbered_jsonl(path):
            missing = [f for f in FIELDS if f not in record]
            if missing:
                raise UserError(f"{path}:{line}: missing field {', '.join(missing)}")
            questions.append(Question(id=record["task_id"], category="code", turns=(INSTRUCTION + record["prompt"],),
                                      reference=record, task="humaneval"))
        return questions

    def score(self, question: Question, answers: list[str]) -> dict[str, float]:
        result = run_python(program(question.reference, answers[-1]), self.timeout_s, self.memory_mb)
        return {"pass@1": float(result.passed)}
