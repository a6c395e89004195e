"""The sandbox contains runaway and stray generated code and counts it as a failure."""
import pytest

from harness.sandbox import run_python


def test_passing_and_failing_programs():
    assert run_python("from __future__ import annotations\nassert 1 + 1 == 2").passed
    result = run_python("assert 1 + 1 == 3")
    assert not result.passed and "AssertionError" in result.reason
    assert run_python("print('hello')\nimport sys\nsys.exit(3)").output.strip() == "hello"


def test_an_infinite_loop_times_out():
    result = run_python("while True:\n    pass", timeout_s=1.5)
    assert not result.passed and result.reason == "timeout"


def test_unbounded_allocation_fails_without_harm():
    result = run_python("x = []\nwhile True:\n    x.append(bytearray(50_000_000))", timeout_s=10, memory_mb=512)
    assert not result.passed and "MemoryError" in result.reason


def test_a_flood_of_output_comes_back_truncated():
    result = run_python("import sys\nwhile True:\n    sys.stderr.write('x' * 100_000)", timeout_s=5)
    assert not result.passed and len(result.output) <= 4000 and len(result.reason) < 300


@pytest.mark.parametrize("attack", [
    "import os\nos.remove({victim!r})",
    "import os\nos.rename({victim!r}, {victim!r} + '.moved')",
    "open({victim!r}, 'w').write('gone')",
    "open({victim!r}, 'a').write('more')",
    "import pathlib\npathlib.Path({victim!r}).write_text('gone')",
    "import io\nio.open({victim!r}, 'wb').write(b'gone')",
    "import os\nos.write(os.open({victim!r}, os.O_WRONLY | os.O_TRUNC), b'gone')",
    "import shutil\nshutil.rmtree({folder!r})",
    "import os\nos.chdir({folder!r})",
    "import os\nos.system('rm -f ' + {victim!r})",
    "import subprocess\nsubprocess.run(['rm', '-f', {victim!r}])",
    "import os\nos.fork()",
    "import socket\nsocket.socket()",
    "import socket\nsocket.create_connection(('127.0.0.1', 80))",
    "import ctypes",
])
def test_files_outside_the_sandbox_are_untouched(tmp_path, attack):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    code = attack.format(victim=str(victim), folder=str(tmp_path))
    assert not run_python(code).passed, code
    assert victim.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_reading_anywhere_and_writing_inside_its_own_directory_are_allowed(tmp_path):
    (tmp_path / "data.txt").write_text("42")
    code = (f"assert open({str(tmp_path / 'data.txt')!r}).read() == '42'\n"
            "import pathlib\npathlib.Path('scratch.txt').write_text('ok')\n"
            "assert open('scratch.txt').read() == 'ok'\nimport os\nos.makedirs('sub/dir')")
    assert run_python(code).passed
