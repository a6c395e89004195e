"""The benchmark side: a Suite yields Questions and, where it has references, scores answers.

A suite knows nothing about models or decoding: text in, text out. Its data comes from a local
directory laid out like ``../shared/data`` (``--data-dir`` or ``HARNESS_DATA_DIR``), else from a
per-user cache filled by a download from the public source, else it fails with one line that says
how to provide the file. Nothing is downloaded when ``HARNESS_OFFLINE=1`` (the tests set it).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from harness.errors import UserError
from harness.registry import Registry


@dataclass(frozen=True)
class Question:
    id: str                      # stable across runs: the resume key and the Spec-Bench question_id
    category: str                # the finest label the data has (Spec-Bench: per MT-bench category)
    turns: tuple[str, ...]       # user turns; MT-bench has two, asked in one conversation
    reference: Any = None        # what score() needs: GSM8K answer, HumanEval tests, FollowEval rule
    task: str = ""               # report grouping (Spec-Bench task); empty means the category

    @property
    def group(self) -> str:
        """The task a question is reported (and --per-task limited) under."""
        return self.task or self.category

    @property
    def text_hash(self) -> str:
        """A short digest of the turns, recorded with each answer: a resume under the same id but a
        changed text is refused instead of keeping answers to the old one."""
        return hashlib.sha256(json.dumps(self.turns, ensure_ascii=False).encode()).hexdigest()[:16]


class Suite(ABC):
    """One benchmark. Subclasses set ``name`` through ``SUITES.register`` and implement ``questions``."""

    name: ClassVar[str]
    unsafe: ClassVar[bool] = False   # scoring executes model output (needs the sandbox and an opt-in)
    public: ClassVar[bool] = True    # False: the data is the user's own, never downloaded, and may be absent

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.files: list[Path] = []   # data files resolved so far, for messages about their content

    @abstractmethod
    def questions(self) -> list[Question]:
        """All questions, in the suite's canonical order."""

    def score(self, question: Question, answers: list[str]) -> dict[str, float]:
        """Quality metrics of one question's answers (one per turn); empty when the suite has none."""
        return {}

    def data_file(self, relative: str, url: str | None = None, sha256: str | None = None) -> Path:
        """Resolve a data file: the data dir, then the download cache, then a download (checked against
        ``sha256`` when given), else an error."""
        path = resolve_data_file(relative, url, self.data_dir, sha256)
        self.files.append(path)
        return path


def load_questions(suite: Suite, categories: Sequence[str] | None = None) -> list[Question]:
    """The suite's questions, checked the same way for every suite: unique ids (the resume key) and
    at least one non-empty turn each; with ``categories``, only those whose task or category is named."""
    questions = suite.questions()
    where = ", ".join(str(f) for f in dict.fromkeys(suite.files)) or f"suite {suite.name}"
    counts = Counter(q.id for q in questions)
    repeated = [qid for qid, n in counts.items() if n > 1]
    if repeated:
        raise UserError(f"{where}: question id {repeated[0]!r} appears {counts[repeated[0]]} times; ids are the "
                        f"resume key and must be unique: fix the data file")
    for question in questions:
        if not question.turns or not all(isinstance(t, str) and t.strip() for t in question.turns):
            raise UserError(f"{where}: question {question.id!r} has no turns or an empty one; give it at least one "
                            f"non-empty user turn, or remove it")
    return select(suite.name, questions, categories)


def select(suite: str, questions: list[Question], categories: Sequence[str] | None) -> list[Question]:
    """The questions whose task or category is one of ``categories`` (all when none is given). A name that
    no question carries is a UserError listing those that do, so a typo never selects nothing."""
    if not categories:
        return questions
    valid = dict.fromkeys(label for q in questions for label in (q.group, q.category))
    unknown = sorted(set(categories) - set(valid))
    if unknown:
        raise UserError(f"unknown {suite} category {', '.join(unknown)} (valid: {', '.join(valid)})")
    return [q for q in questions if q.group in categories or q.category in categories]


SUITES: Registry[Suite] = Registry("suite", Suite, package="suites", group="harness.suites")


def data_dir_from_env(explicit: Path | str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("HARNESS_DATA_DIR")
    return Path(env) if env else None


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def resolve_data_file(relative: str, url: str | None, data_dir: Path | None, sha256: str | None = None) -> Path:
    data_dir = data_dir_from_env(data_dir)
    if data_dir is not None:
        path = data_dir / relative
        if path.is_file():
            return path
        raise UserError(f"data file {path} is missing: --data-dir / HARNESS_DATA_DIR must hold {relative}")
    cached = cache_root() / "data" / relative
    if cached.is_file():
        return cached
    how = f"pass --data-dir DIR (or set HARNESS_DATA_DIR) where DIR/{relative} exists"
    if url is None or os.environ.get("HARNESS_OFFLINE") == "1":
        raise UserError(f"no local copy of {relative}: {how}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(cached.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
    except OSError as exc:
        raise UserError(f"could not download {relative} from {url} ({exc}); {how}") from exc
    got = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if sha256 is not None and got != sha256:
        tmp.unlink()
        raise UserError(f"{url} gave a file with sha256 {got}, not the pinned {sha256}; {how}")
    tmp.replace(cached)
    return cached


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a .jsonl or .jsonl.gz file; a malformed line is reported with its file and line number."""
    for _, record in read_numbered_jsonl(path):
        yield record


def describe_suites(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every registered suite with its question count and counts per task and category.

    Each entry: ``name``, ``questions`` (None when the data is unavailable, then ``error`` says why),
    ``tasks`` and ``categories`` (label -> count; a question without a task counts under its
    category), ``unsafe`` (scoring executes model output).
    """
    rows = []
    for name in SUITES.names():
        cls = SUITES.get(name)
        row: dict[str, Any] = {"name": name, "questions": None, "error": None, "tasks": {}, "categories": {},
                               "unsafe": cls.unsafe}
        try:
            questions = load_questions(cls(data_dir=data_dir))
        except UserError as exc:
            row["error"] = str(exc)
        else:
            row["questions"] = len(questions)
            row["tasks"] = dict(Counter(q.group for q in questions))
            row["categories"] = dict(Counter(q.category for q in questions))
        rows.append(row)
    return rows


def read_numbered_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` of a .jsonl or .jsonl.gz file, blank lines skipped but counted."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(_lines(handle, path), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from exc
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object")
            yield number, record


def _lines(handle, path: Path) -> Iterator[bytes]:
    """Raw lines of a file; a damaged gzip stream is one error naming the file."""
    try:
        yield from handle
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read ({exc}); download or copy it again") from exc
