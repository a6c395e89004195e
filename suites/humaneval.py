"""HumanEval (Chen et al., 2021): 164 problems, prompted as code completion, scored by pass@1 (REFERENCE §3.5).

The turn is "Complete the code I provided." followed directly by the problem's prompt, as in the
EAGLE-family evaluation sets. Scoring executes the answer against the problem's tests in
harness.sandbox, so it needs the explicit opt-in ``--allow-code-exec`` (``unsafe``). A chat answer's
code is the first fenced block if there is one; code that defines the entry point runs on its own
(after the prompt's imports), anything else is treated as the body that continues the prompt.
"""
from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError
from harness.sandbox import run_python
from harness.suite import SUITES, Question, Suite, read_jsonl

URL = "https://raw.githubusercontent.com/openai/human-eval/master/data/HumanEval.jsonl.gz"
INSTRUCTION = "Complete the code I provided."
FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def program(problem: dict, answer: str) -> str:
    """The Python file that passes iff the answer solves the problem."""
    fenced = FENCE.search(answer)
    code = fenced.group(1) if fenced else answer
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        imports = "\n".join(l for l in problem["prompt"].splitlines() if l.startswith(("import ", "from ")))
        body = imports + "\n" + code
    else:
        body = problem["prompt"] + code
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


@SUITES.register("humaneval", "human-eval")
class HumanEval(Suite):
    """HumanEval: 164 Python problems, pass@1 in a sandbox (needs --allow-code-exec to score)."""

    unsafe = True

    def __init__(self, data_dir: Path | None = None, categories=None) -> None:
        super().__init__(data_dir)
        if categories and set(categories) - {"code"}:
            raise UserError(f"unknown category {', '.join(sorted(set(categories) - {'code'}))} (valid: code)")

    def questions(self) -> list[Question]:
        path = self.data_file("humaneval/HumanEval.jsonl.gz", URL)
        questions = []
        for line, record in enumerate(read_jsonl(path), 1):
            missing = [f for f in FIELDS if f not in record]
            if missing:
                raise UserError(f"{path}:{line}: missing field {', '.join(missing)}")
            questions.append(Question(id=record["task_id"], category="code", turns=(INSTRUCTION + record["prompt"],),
                                      reference=record, task="humaneval"))
        return questions

    def score(self, question: Question, answers: list[str]) -> dict[str, float]:
        return {"pass@1": float(run_python(program(question.reference, answers[-1])).passed)}
