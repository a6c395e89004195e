"""The sandbox contains runaway and stray generated code and counts it as a failure."""
from harness.sandbox import run_python


def test_passing_and_failing_programs():
    assert run_python("assert 1 + 1 == 2").passed
    result = run_python("assert 1 + 1 == 3")
    assert not result.passed and "AssertionError" in result.reason


def test_an_infinite_loop_times_out():
    result = run_python("while True:\n    pass", timeout_s=2)
    assert not result.passed and result.reason == "timeout"


def test_unbounded_allocation_fails_without_harm():
    result = run_python("x = []\nwhile True:\n    x.append(bytearray(50_000_000))", timeout_s=10, memory_mb=512)
    assert not result.passed and result.reason != "passed"


def test_files_outside_the_sandbox_are_untouched(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for code in (f"import os\nos.remove({str(victim)!r})", f"open({str(victim)!r}, 'w').write('gone')",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})", "import socket\nsocket.socket()",
                 "import subprocess\nsubprocess.run(['true'])"):
        assert not run_python(code).passed, code
    assert victim.read_text() == "precious"


def test_writing_inside_its_own_directory_is_allowed():
    assert run_python("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'").passed
