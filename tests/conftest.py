"""Shared fixtures: the shared data directory, offline mode, and tiny random targets built from a config."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("HARNESS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

os.environ["HARNESS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "spec_bench" / "question.jsonl").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set HARNESS_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A loadable tiny target folder (random weights, word-level tokenizer), made once per test session."""
    from tests.tiny import save_tiny_target

    return save_tiny_target(tmp_path_factory.mktemp("target"))
