"""The sandbox runs honest programs, contains runaway ones, and refuses in one line without bubblewrap.

Hostile programs: tests/test_sandbox_attacks.py."""
import pytest

from harness import sandbox
from harness.errors import UserError
from harness.sandbox import run_python

needs_sandbox = pytest.mark.skipif(sandbox.unavailable() is not None,
                                   reason=f"no sandbox here: {sandbox.unavailable()}")


@needs_sandbox
def test_passing_and_failing_programs():
    assert run_python("from __future__ import annotations\nassert 1 + 1 == 2").passed
    result = run_python("assert 1 + 1 == 3")
    assert not result.passed and "AssertionError" in result.reason
    assert run_python("print('hello')\nimport sys\nsys.exit(3)").output.strip() == "hello"


@needs_sandbox
def test_an_infinite_loop_times_out():
    result = run_python("while True:\n    pass", timeout_s=1.5)
    assert not result.passed and result.reason == "timeout"


@needs_sandbox
def test_unbounded_allocation_fails_without_harm():
    result = run_python("x = []\nwhile True:\n    x.append(bytearray(50_000_000))", timeout_s=10, memory_mb=512)
    assert not result.passed and "MemoryError" in result.reason


@needs_sandbox
def test_a_flood_of_output_comes_back_truncated():
    result = run_python("import sys\nwhile True:\n    sys.stderr.write('x' * 100_000)", timeout_s=5)
    assert not result.passed and len(result.output) <= 4000 and len(result.reason) < 300


@needs_sandbox
def test_the_program_has_a_private_writable_folder_and_nothing_else(tmp_path):
    (tmp_path / "data.txt").write_text("42")
    code = (f"import os\nassert not os.path.exists({str(tmp_path / 'data.txt')!r})\n"
            "import pathlib\npathlib.Path('scratch.txt').write_text('ok')\n"
            "assert open('scratch.txt').read() == 'ok'\nos.makedirs('sub/dir')\nprint(os.getuid(), os.getcwd())")
    result = run_python(code)
    assert result.passed and result.output == "65534 /tmp\n", result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_without_bubblewrap_code_execution_refuses_in_one_line(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.unavailable.cache_clear()
    try:
        with pytest.raises(UserError, match="apt-get install bubblewrap"):
            sandbox.require_sandbox()
        with pytest.raises(UserError, match="apt-get install bubblewrap"):
            run_python("pass")
    finally:
        sandbox.unavailable.cache_clear()


def test_allow_code_exec_refuses_before_any_work(monkeypatch, tmp_path, capsys):
    from harness.cli import main

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.unavailable.cache_clear()
    try:
        out = tmp_path / "run"
        code = main(["run", "--methods", "vanilla", "--target", "no-such-target", "--suites", "humaneval",
                     "--allow-code-exec", "--out", str(out)])
    finally:
        sandbox.unavailable.cache_clear()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "apt-get install bubblewrap" in err and not out.exists()
