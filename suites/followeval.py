"""FollowEval (Jing et al., 2023, arXiv 2311.09829): an adapter for data the user supplies (docs/reference.md §3.6).

The benchmark's 200 bilingual, human-written items are not public, so nothing is downloaded and no
other benchmark (FollowBench, IFEval) is substituted. A user who has the data puts it at
``<data-dir>/followeval/followeval.jsonl``, one JSON object per line:

    {"id": "en-001", "lang": "en", "instruction": "...", "dimensions": ["string manipulation"],
     "regex": "^Paris$", "regex_mode": "search", "flags": "i"}

Required: ``id``, ``lang`` (``en`` or ``zh``; the question's category), ``instruction`` (the one
user turn), ``regex``. Optional: ``dimensions`` (list of strings), ``regex_mode`` (``search``, the
default: the rule matches anywhere in the stripped answer; ``fullmatch``: it matches the whole
stripped answer), ``flags`` (letters from ``i``, ``m``, ``s``). The score is ``accuracy``: 1.0 when
the rule matches. The paper's exact matching semantics are not public; report the mode with results.
"""
from __future__ import annotations

import re

from harness.errors import UserError
from harness.suite import SUITES, Question, Suite, read_numbered_jsonl

FILE = "followeval/followeval.jsonl"
REQUIRED = ("id", "lang", "instruction", "regex")
LANGS = ("en", "zh")
MODES = ("search", "fullmatch")
FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


def compile_rule(record: dict, where: str) -> re.Pattern:
    """The record's regex with its flags; a bad mode, flag or pattern is a UserError at ``where``."""
    mode, letters = record.get("regex_mode", "search"), record.get("flags", "")
    if mode not in MODES:
        raise UserError(f"{where}: regex_mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(letters, str) or set(letters) - set(FLAGS):
        raise UserError(f"{where}: flags must be letters from {''.join(FLAGS)}, not {letters!r}")
    flags = 0
    for letter in letters:
        flags |= FLAGS[letter]
    try:
        return re.compile(record["regex"], flags)
    except (re.error, TypeError) as exc:
        raise UserError(f"{where}: bad regex ({exc})") from exc


@SUITES.register("followeval")
class FollowEval(Suite):
    """FollowEval: user-supplied instruction-following items with regex rules (data not public)."""

    public = False   # the items are not public: the user's own copy, or none

    def questions(self) -> list[Question]:
        try:
            path = self.data_file(FILE)
        except UserError as exc:
            raise UserError(f"FollowEval's data is not public and is never downloaded; put your copy at "
                            f"<data-dir>/{FILE} (format: docs/suites.md) [{exc}]") from exc
        questions = []
        for line, record in read_numbered_jsonl(path):
            where = f"{path}:{line}"
            missing = [f for f in REQUIRED if f not in record]
            if missing:
                raise UserError(f"{where}: missing field {', '.join(missing)}")
            if record["lang"] not in LANGS:
                raise UserError(f"{where}: lang must be one of {', '.join(LANGS)}, not {record['lang']!r}")
            if not isinstance(record["instruction"], str):
                raise UserError(f"{where}: field instruction must be a string")
            compile_rule(record, where)
            questions.append(Question(id=str(record["id"]), category=record["lang"], turns=(record["instruction"],),
                                      reference=record, task="followeval"))
        return questions

    def score(self, question: Question, answers: list[str]) -> dict[str, float]:
        rule = compile_rule(question.reference, f"followeval question {question.id}")
        match = rule.fullmatch if question.reference.get("regex_mode", "search") == "fullmatch" else rule.search
        return {"accuracy": float(match(answers[-1].strip()) is not None)}

