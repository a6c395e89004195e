"""Run untrusted generated Python (HumanEval completions) in a contained child process.

What is contained: the child runs ``python -I`` in a fresh temporary directory with an empty
environment, no stdin, a wall-clock timeout that kills its whole process group, and rlimits on CPU
time, address space, file size and process count; its output goes to a file capped by the file-size
limit and only the tail comes back. Before the untrusted code runs, a guard disables the usual ways
to reach outside: sockets, subprocesses, os.system/exec/fork/kill, deleting, renaming or changing
permissions of files, changing directory, opening any file for writing outside the temporary
directory (``open``, ``io.open``, hence ``pathlib``, and ``os.open``), and importing ctypes or
multiprocessing.
What is not: this is not a security boundary against code written to escape (Python
introspection, ``_io``/``posix`` internals or reading files can still get around the guard, and
reading anywhere is allowed); it keeps honest mistakes, infinite loops, runaway allocation and
stray file writes of model-generated code from harming the machine or the run. Run untrusted
benchmarks only with the explicit opt-in (``--allow-code-exec``); use a container or VM for more.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

PROGRAM = "program.py"
OUTPUT_CHARS = 4000

# Runs in the child before the program; the program is then executed as __main__ by runpy, so its
# line numbers and `from __future__` imports are its own.
GUARD = r'''
import builtins, io, os, posix, resource, runpy, shutil, socket, subprocess, sys
_cpu_s, _memory = int(sys.argv[1]), int(sys.argv[2]) << 20
for _limit, _value in ((resource.RLIMIT_CPU, _cpu_s), (resource.RLIMIT_AS, _memory),
                       (resource.RLIMIT_FSIZE, 10 << 20), (resource.RLIMIT_NPROC, 64)):
    _hard = resource.getrlimit(_limit)[1]
    _value = _value if _hard == resource.RLIM_INFINITY else min(_value, _hard)
    resource.setrlimit(_limit, (_value, _value))  # hard limits: the program cannot raise them again
_root = os.path.realpath(os.getcwd()) + os.sep
_open, _os_open = builtins.open, os.open
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _inside(path):
    return isinstance(path, int) or os.path.realpath(os.fsdecode(path)).startswith(_root)
def _refuse(*args, **kwargs):
    raise PermissionError("disabled in the sandbox")
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(m in mode for m in "wax+") and not _inside(file):
        raise PermissionError("writing outside the sandbox directory")
    return _open(file, mode, *args, **kwargs)
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE and (kwargs.get("dir_fd") is not None or not _inside(path)):
        raise PermissionError("writing outside the sandbox directory")
    return _os_open(path, flags, *args, **kwargs)
builtins.open = io.open = _guarded_open
os.open = posix.open = _guarded_os_open
for _name in ("system", "popen", "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
              "chmod", "chown", "lchown", "chdir", "fchdir", "chroot", "fork", "forkpty", "kill", "killpg",
              "execv", "execve", "execvp", "execvpe", "spawnv", "spawnve", "posix_spawn", "posix_spawnp",
              "truncate", "ftruncate", "symlink", "link", "putenv", "setuid", "setgid"):
    for _module in (os, posix):
        if hasattr(_module, _name):
            setattr(_module, _name, _refuse)
shutil.rmtree = shutil.move = shutil.copy = shutil.copy2 = shutil.copyfile = shutil.chown = _refuse
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_call = subprocess.check_output = _refuse
socket.socket = socket.create_connection = socket.socketpair = socket.fromfd = _refuse
for _name in ("ctypes", "_ctypes", "multiprocessing", "_posixsubprocess"):
    sys.modules[_name] = None
del _name, _module, _limit, _value, _hard
sys.argv = ["''' + PROGRAM + r'''"]
runpy.run_path("''' + PROGRAM + r'''", run_name="__main__")
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str       # "passed", "timeout", "failed: <last output line>" or "killed: <signal>"
    output: str       # the tail of the child's stdout and stderr


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Execute code in the sandbox; it passes when the process exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="harness-sandbox-") as workdir, tempfile.TemporaryFile() as output:
        with open(os.path.join(workdir, PROGRAM), "w", encoding="utf-8") as handle:
            handle.write(code)
        # A new session: its own process group, so a timeout kills everything it started. The child
        # sets its rlimits itself (no preexec_fn, which is unsafe when the caller has threads).
        process = subprocess.Popen([sys.executable, "-I", "-c", GUARD, str(int(timeout_s) + 1), str(memory_mb)],
                                   cwd=workdir, env={}, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(process.pid)  # also whatever it left running (pids are not reused that fast)
        process.wait()
        output.seek(max(0, os.fstat(output.fileno()).st_size - OUTPUT_CHARS))
        text = output.read().decode("utf-8", "replace")
    if timed_out:
        return SandboxResult(False, "timeout", text)
    if process.returncode == 0:
        return SandboxResult(True, "passed", text)
    if process.returncode < 0:
        number = -process.returncode
        return SandboxResult(False, f"killed: {signal.strsignal(number) or f'signal {number}'}", text)
    lines = text.strip().splitlines()
    last = lines[-1][-200:] if lines else f"exit code {process.returncode}"
    return SandboxResult(False, f"failed: {last}", text)
