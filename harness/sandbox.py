"""Run untrusted generated Python (HumanEval completions) in a contained child process.

What is contained: the child runs ``python -I`` in a fresh temporary directory with an empty
environment, no stdin, a wall-clock timeout that kills its whole process group, and rlimits on CPU
time, address space, file size and process count. Before the untrusted code runs, a guard disables
the usual ways to reach outside: sockets, subprocesses and os.system/exec/fork, deleting, renaming
or changing permissions of files, changing directory, and opening any file for writing outside the
temporary directory.
What is not: this is not a security boundary against code written to escape (Python
introspection can restore what the guard removed); it keeps honest mistakes, infinite loops,
runaway allocation and stray file writes of model-generated code from harming the machine or the
run. Run untrusted benchmarks only with the explicit opt-in (``--allow-code-exec``).
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

GUARD = r'''
import builtins, os, shutil, socket, subprocess, sys
_root = os.path.realpath(os.getcwd())
_open = builtins.open
def _refuse(*args, **kwargs):
    raise PermissionError("disabled in the sandbox")
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(m in mode for m in "wax+") and not os.path.realpath(os.fspath(file)).startswith(_root + os.sep):
        raise PermissionError("writing outside the sandbox directory")
    return _open(file, mode, *args, **kwargs)
builtins.open = _guarded_open
for _name in ("system", "popen", "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
              "chmod", "chown", "chdir", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp",
              "spawnv", "truncate", "symlink", "link", "putenv"):
    if hasattr(os, _name):
        setattr(os, _name, _refuse)
shutil.rmtree = shutil.move = shutil.copy = shutil.copyfile = _refuse
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _refuse
socket.socket = socket.create_connection = _refuse
del _name
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str       # "passed", "timeout", "failed: <last line of stderr>"
    output: str       # the child's stderr, truncated


def _limits(cpu_s: int, memory_mb: int) -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (10 << 20, 10 << 20))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Execute code; it passes when the process exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="harness-sandbox-") as workdir:
        script = os.path.join(workdir, "program.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(GUARD + "\n" + code + "\n")
        process = subprocess.Popen([sys.executable, "-I", script], cwd=workdir, env={}, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   preexec_fn=lambda: _limits(int(timeout_s) + 1, memory_mb))
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return SandboxResult(False, "timeout", "")
        text = stderr.decode("utf-8", "replace")[-4000:]
        if process.returncode == 0:
            return SandboxResult(True, "passed", text)
        last = text.strip().splitlines()[-1] if text.strip() else f"exit code {process.returncode}"
        return SandboxResult(False, f"failed: {last}", text)
