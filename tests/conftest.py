"""Shared fixtures: the benchmark data directory, offline mode, and tiny random targets built from a config."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.suite import cache_root

# Where the benchmark files may be: $HARNESS_DATA_DIR, ../shared/data beside the checkout, or the cache
# that `python -m harness suites` fills with the public evaluation files when online (make test runs it).
DATA_DIRS = [Path(p) for p in (os.environ.get("HARNESS_DATA_DIR"),) if p] + [
    Path(__file__).resolve().parents[2] / "shared" / "data", cache_root() / "data"]
HOW = ("set HARNESS_DATA_DIR to a folder laid out as in docs/suites.md, or run `python -m harness suites` "
       "once online to download the public evaluation files")

os.environ["HARNESS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def data_dir_with(*relative: str) -> Path:
    """The first data folder that holds every named file; the calling test is skipped, saying how to get
    them, when none does."""
    for folder in DATA_DIRS:
        if all((folder / r).is_file() for r in relative):
            return folder
    pytest.skip(f"benchmark data {', '.join(relative)} not found in {', '.join(map(str, DATA_DIRS))}: {HOW}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """A folder with the evaluation files (Spec-Bench, MT-bench, GSM8K test, HumanEval)."""
    return data_dir_with("spec_bench/question.jsonl", "mt_bench/question.jsonl", "gsm8k/test.jsonl",
                         "humaneval/HumanEval.jsonl.gz")


@pytest.fixture(scope="session")
def training_data() -> Path:
    """A folder with the evaluation files and the training-prompt files (never downloaded)."""
    from harness.train.prompts import SOURCES

    return data_dir_with("spec_bench/question.jsonl", "mt_bench/question.jsonl", "gsm8k/test.jsonl",
                         "humaneval/HumanEval.jsonl.gz", *SOURCES.values())


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A loadable tiny target folder (random weights, word-level tokenizer), made once per test session."""
    from tests.tiny import save_tiny_target

    return save_tiny_target(tmp_path_factory.mktemp("target"))
