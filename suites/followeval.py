"""FollowEval (Jing et al., 2023, arXiv 2311.09829): an adapter for data the user supplies (REFERENCE §3.6).

The benchmark's 200 bilingual, human-written items are not public, so nothing is downloaded and no
other benchmark is substituted. A user who has the data puts it at ``<data-dir>/followeval/followeval.jsonl``,
one JSON object per line:

    {"id": "en-001", "lang": "en", "instruction": "...", "dimensions": ["string manipulation"],
     "regex": "^Paris$", "regex_mode": "search", "flags": "i"}

``regex_mode`` is ``search`` (default: the rule matches anywhere) or ``fullmatch`` (the whole
stripped answer); ``flags`` may hold ``i``, ``m``, ``s``. The score is accuracy: 1 when the rule
matches the stripped answer. The paper's exact matching semantics are not public; record the mode.
"""
from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError
from harness.suite import SUITES, Question, Suite, read_jsonl

FILE = "followeval/followeval.jsonl"
REQUIRED = ("id", "lang", "instruction", "regex")
FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


@SUITES.register("followeval")
class FollowEval(Suite):
    """FollowEval: user-supplied instruction-following items with regex rules (data not public)."""

    def __init__(self, data_dir: Path | None = None, categories=None) -> None:
        super().__init__(data_dir)
        self.categories = categories

    def questions(self) -> list[Question]:
        try:
            path = self.data_file(FILE)
        except UserError as exc:
            raise UserError(f"FollowEval's data is not public; put your copy at <data-dir>/{FILE} "
                            f"(format: docs/suites.md) [{exc}]") from exc
        questions = []
        for line, record in enumerate(read_jsonl(path), 1):
            missing = [f for f in REQUIRED if f not in record]
            if missing:
                raise UserError(f"{path}:{line}: missing field {', '.join(missing)}")
            mode = record.get("regex_mode", "search")
            if mode not in ("search", "fullmatch") or set(record.get("flags", "")) - set(FLAGS):
                raise UserError(f"{path}:{line}: regex_mode must be search or fullmatch, flags from i, m, s")
            try:
                re.compile(record["regex"])
            except re.error as exc:
                raise UserError(f"{path}:{line}: bad regex ({exc})") from exc
            questions.append(Question(id=str(record["id"]), category=record["lang"], turns=(record["instruction"],),
                                      reference=record, task="followeval"))
        if self.categories:
            questions = [q for q in questions if q.category in self.categories]
        return questions

    def score(self, question: Question, answers: list[str]) -> dict[str, float]:
        rule = question.reference
        flags = 0
        for letter in rule.get("flags", ""):
            flags |= FLAGS[letter]
        match = re.fullmatch if rule.get("regex_mode", "search") == "fullmatch" else re.search
        return {"accuracy": float(match(rule["regex"], answers[-1].strip(), flags) is not None)}
