"""Hostile programs against the sandbox: nothing outside changes, nothing outlives a run, no fake pass.

Every attack prints ESCAPED if the step that should be impossible returned; the assertions also look
at the outside (victim files, a listening socket, a sleeping process, the process table).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness import sandbox
from harness.sandbox import Program, run_python


pytestmark = pytest.mark.skipif(sandbox.unavailable() is not None, reason=f"no sandbox here: {sandbox.unavailable()}")

STDLIB = os.path.dirname(os.__file__)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "keep.txt"
    path.write_text("precious")
    return path


def _blocked(code: str, timeout_s: float = 5) -> sandbox.SandboxResult:
    result = run_python(code, timeout_s=timeout_s)
    assert not result.passed and "ESCAPED" not in result.output, (code, result)
    return result


WRITES = [
    "open({victim!r}, 'w').write('gone')",
    "import io\nio.FileIO({victim!r}, 'w').write(b'gone')",
    "import _io\n_io.open({victim!r}, 'a').write('more')",
    "import builtins\nbuiltins.__dict__['open']({victim!r}, 'w').write('gone')",
    "import os\nos.write(os.open({victim!r}, os.O_WRONLY | os.O_TRUNC), b'gone')",
    "import sys\nfor name in ('os', 'posix'):\n    sys.modules.pop(name, None)\nimport posix\n"
    "posix.truncate({victim!r}, 0)",
    "import os\nos.remove({victim!r})",
    "import os\nos.rename({victim!r}, {victim!r} + '.moved')",
    "import shutil\nshutil.rmtree({folder!r})",
    "import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.truncate({victim!r}.encode(), 0) == 0",
    "import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.unlink({victim!r}.encode()) == 0",
    # places the sandbox does show, read-only
    "open({stdlib!r} + '/{probe}', 'w').write('x')",
    "import os\nos.mkdir('/usr/lib/{probe}')",
    "import ctypes\nassert ctypes.CDLL(None).creat(b'/usr/lib/{probe}', 0o644) >= 0",
]


@pytest.mark.parametrize("attack", WRITES)
def test_writes_outside_fail(tmp_path, victim, attack):
    probe = f"sandbox-probe-{uuid.uuid4().hex}"
    _blocked(attack.format(victim=str(victim), folder=str(tmp_path), stdlib=STDLIB, probe=probe) + "\nprint('ESCAPED')")
    assert victim.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    for leaked in (Path(STDLIB) / probe, Path("/usr/lib") / probe):
        assert not leaked.exists(), leaked


def test_the_harness_files_and_environment_are_invisible(monkeypatch):
    monkeypatch.setenv("HARNESS_SECRET", "hunter2")
    code = ("import os\nprint(sorted(os.environ))\n"
            f"for path in ({str(Path(sandbox.__file__))!r}, {sys.prefix!r}, os.path.expanduser('~/.bashrc'), '/work', "
            "'/proc/1/environ', '/etc/passwd'):\n"
            "    assert not os.path.exists(path), path\n")
    result = run_python(code)
    assert result.passed, result
    assert "HARNESS_SECRET" not in result.output and "hunter2" not in result.output


PROCESSES = [
    "import os\nos.fork()",
    "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'], check=True)",
    "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'true'], check=True)",
    "import os\nassert os.system('true') == 0",
    "import sys\nfor name in ('os', 'posix'):\n    sys.modules.pop(name, None)\nimport posix\nposix.fork()",
    "import multiprocessing as mp\np = mp.get_context('spawn').Process(target=print)\np.start()\np.join()\n"
    "assert p.exitcode == 0",
    "import multiprocessing as mp\np = mp.get_context('fork').Process(target=print)\np.start()\np.join()\n"
    "assert p.exitcode == 0",
    "import threading\nthreading.Thread(target=print).start()",
    "import ctypes\nassert ctypes.CDLL(None).fork() >= 0",
]


@pytest.mark.parametrize("attack", PROCESSES)
def test_no_process_or_thread_can_be_started(attack):
    _blocked(attack + "\nprint('ESCAPED')")


def test_a_fork_storm_gets_nowhere():
    code = ("import os, time\nmade = 0\nfor _ in range(200):\n    try:\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        made += 1\n"
            "    except OSError:\n        pass\nprint('forks', made)\n")
    start = time.monotonic()
    result = run_python(code)
    assert result.passed and "forks 0" in result.output and time.monotonic() - start < 5, result


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    with pytest.raises(BlockingIOError):  # nobody connected
        server.accept()
    server.close()


@pytest.mark.parametrize("attack", [
    "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
    "import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
    "import socket\ns = socket.socket(socket.AF_INET6)\ns.settimeout(2)\ns.connect(('::1', {port}))",
    "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
    "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0{abstract}')",
])
def test_no_connection_even_to_loopback(listener, attack):
    abstract = f"harness-test-{uuid.uuid4().hex}"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind("\0" + abstract)
    unix.listen()
    unix.setblocking(False)
    try:
        _blocked(attack.format(port=listener.getsockname()[1], abstract=abstract) + "\nprint('ESCAPED')")
        with pytest.raises(BlockingIOError):
            unix.accept()
    finally:
        unix.close()


@pytest.fixture
def sleeper():
    process = subprocess.Popen(["sleep", "60"])
    yield process
    assert process.poll() is None, "a process outside the sandbox was killed"
    process.kill()
    process.wait()


@pytest.mark.parametrize("attack", [
    "import os\nos.kill(os.getppid(), 9)",
    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), 9)",
    "import os\nos.kill({harness}, 9)",
    "import os\nos.kill({sleeper}, 9)",
    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({sleeper}), 9)",
    "import os\nos.kill(-1, 9)",
    "import os\nos.killpg({harness_group}, 9)",
])
def test_signals_reach_neither_the_harness_nor_other_processes(sleeper, attack):
    code = attack.format(harness=os.getpid(), sleeper=sleeper.pid, harness_group=os.getpgrp())
    run_python(code + "\nimport time\ntime.sleep(0.2)", timeout_s=5)
    assert sleeper.poll() is None  # and this test process is still here to check


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("main_waits", [False, True])
def test_nothing_outlives_the_run_even_with_process_creation_allowed(monkeypatch, main_waits):
    # A second layer under the one-process limit: lift that limit and check that a setsid'd double
    # fork still dies with the namespace, both when the program ends and when it times out.
    monkeypatch.setattr(sandbox, "GUARD", sandbox.GUARD.replace("(resource.RLIMIT_NPROC, 1)",
                                                                "(resource.RLIMIT_NPROC, 16)"))
    marker = f"escapee-{uuid.uuid4().hex}"
    code = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])\n"
            "    os._exit(0)\n"
            "time.sleep(0.5)\n" + ("while True:\n    pass\n" if main_waits else ""))
    result = run_python(code, timeout_s=2)
    assert result.reason == ("timeout" if main_waits else "passed"), result
    assert _processes_with(marker) == []


FAKE_PASSES = [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "raise SystemExit(0)",
    "import atexit, os\natexit.register(os._exit, 0)\ndef add(a, b):\n    return 0",
    "import sys, os\nsys.excepthook = lambda *args: os._exit(0)\ndef add(a, b):\n    return 0",
    "print('0' * 32)\nimport os\nos._exit(0)",
    "class Equal:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Equal()",
    "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
    "def add(a, b):\n    return Int(0)",
    "class Meta(type):\n    def __eq__(cls, other):\n        return True\nclass Anything(metaclass=Meta):\n    pass\n"
    "def add(a, b):\n    return Anything",
    "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 5",
    "def add(a, b):\n    return 0\nimport sys\nsys.settrace(lambda *args: None)",
    "def add(a, b):\n    return 0\nswallowed = '''",
    "def add(a, b):\n    return 0\nif False:",
]
TESTS = ("def check(candidate):\n    assert candidate(2, 3) == 5\n    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n"
         "check(strict_returns(add))\n")


def test_an_honest_answer_passes():
    assert run_python(Program("def add(a, b):\n    return a + b\n", TESTS)).passed


@pytest.mark.parametrize("answer", FAKE_PASSES)
def test_fake_passes_fail(answer):
    result = run_python(Program(answer + "\n", TESTS))
    assert not result.passed, result


def test_strict_returns_looks_inside_containers():
    code = "class Equal:\n    def __eq__(self, other):\n        return True\ndef f():\n    return [(1, Equal())]\n"
    result = run_python(Program(code, "assert strict_returns(f)() == [(1, 2)]\n"))
    assert not result.passed and "not a plain value" in result.reason
    plain = "def f():\n    return [(1, 'a', None, 2.5, True), {'k': {1, 2}}, frozenset(), b'x', 1j]\n"
    assert run_python(Program(plain, "assert strict_returns(f)()[0][0] == 1\n")).passed
