"""vLLM runs the committed EAGLE-2 draft as the harness does (issue #14): marked ``engine``, skipped
unless the engines venv exists (``make engines``). Minutes on CPU: vLLM starts an engine process."""
import pytest

from harness.errors import UserError

from harness.engines import check, venv

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def engines_python_or_skip():
    try:
        return venv.python()
    except UserError as exc:
        pytest.skip(f"no engines venv: {exc}")


def test_vllm_accepts_the_committed_eagle2_draft_and_keeps_the_text(shared_data):
    engines_python_or_skip()
    summary = check.run(check.CheckConfig(method="eagle2", prompts=3, k=3, max_new_tokens=64, data_dir=shared_data))
    assert summary["vllm_mal"] >= 1.2
    assert summary["identical_texts"] == 3
