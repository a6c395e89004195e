"""Training prompts: the shared prompt files and GSM8K train, minus anything that overlaps an evaluation.

Sources (docs/reference.md §3.7): ShareGPT first turns (ml-energy sample), GPTeacher codegen and roleplay
instructions, GSM8K train questions. A prompt is dropped when it shares an 8-word run with a turn of
any registered suite's questions, so drafts never see test text, and a suite is decontaminated
against from the day it registers.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from harness.errors import UserError
from harness.suite import SUITES, load_questions, read_jsonl, resolve_data_file

SOURCES = {
    "sharegpt": "train_prompts/sharegpt_mlenergy/sg_90k_part1_html_cleaned_lang_first_sampled_sorted.json",
    "codegen": "train_prompts/gpteacher/codegen-instruct.json",
    "roleplay": "train_prompts/gpteacher/roleplay-simple-deduped-roleplay-instruct.json",
    "gsm8k": "gsm8k/train.jsonl",
}
NGRAM = 8


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def _read_source(name: str, data_dir: Path | None) -> list[str]:
    path = resolve_data_file(SOURCES[name], None, data_dir)
    if name == "gsm8k":
        return [record["question"] for record in read_jsonl(path)]
    records = json.loads(path.read_text(encoding="utf-8"))
    if name == "sharegpt":
        return [r["conversations"][0]["value"] for r in records
                if r.get("conversations") and r["conversations"][0].get("from") == "human"]
    return [(r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")) for r in records]


def evaluation_shingles(data_dir: Path | None) -> tuple[set[tuple[str, ...]], list[str]]:
    """8-word runs of every turn of every registered suite's questions, and the suites they came from.
    A suite whose data is missing is an error, not a silent pass, unless its data is the user's own
    (``Suite.public`` false) and absent: then there is nothing a draft could have seen."""
    shingles: set[tuple[str, ...]] = set()
    checked = []
    for name in SUITES.names():
        suite = SUITES.get(name)(data_dir=data_dir)
        try:
            questions = load_questions(suite)
        except UserError:
            if suite.public:
                raise
            continue
        for question in questions:
            for turn in question.turns:
                shingles |= _shingles(turn)
        checked.append(name)
    return shingles, checked


def training_prompts(sources: list[str], data_dir: Path | None, seed: int = 0) -> tuple[list[str], dict]:
    """Deduplicated, evaluation-free prompts, interleaved across sources in a seeded order."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise UserError(f"unknown prompt source {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    banned, suites = evaluation_shingles(data_dir)
    per_source, stats = [], {"dropped_overlap": 0, "dropped_duplicate": 0, "per_source": {}, "decontaminated": suites}
    seen: set[str] = set()
    for name in sources:
        kept = []
        for text in _read_source(name, data_dir):
            text = text.strip()
            if not text or text in seen:
                stats["dropped_duplicate"] += 1
                continue
            seen.add(text)
            if _shingles(text) & banned:
                stats["dropped_overlap"] += 1
                continue
            kept.append(text)
        random.Random(f"{seed}:{name}").shuffle(kept)
        stats["per_source"][name] = len(kept)
        per_source.append(kept)
    mixed = [p for group in _interleave(per_source) for p in group]
    return mixed, stats


def _interleave(groups: list[list[str]]):
    for i in range(max((len(g) for g in groups), default=0)):
        yield [g[i] for g in groups if i < len(g)]
