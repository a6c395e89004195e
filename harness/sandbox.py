"""Run untrusted generated Python (HumanEval completions) in a process the kernel confines.

Isolation is bubblewrap's (``bwrap``, Debian package ``bubblewrap``), not Python's: each program runs
in new user, PID, network, IPC, mount, UTS and cgroup namespaces (``--unshare-all``), in a new
session (no terminal to inject input into), with an empty environment. Its filesystem is read-only
and holds only what the interpreter needs: ``/usr/lib*`` (``/lib*``), the interpreter file, its
standard library and ``libpython``; the only writable place is a private 16 MiB tmpfs at ``/tmp``,
its working directory. The repository, the virtual environment's packages, ``/work``, ``/root``,
``$HOME``, ``/proc`` and every other process are invisible. It runs as uid/gid 65534 (when the
harness runs as root the user namespace maps 65534 to the real uid 65534, not to root, so the
limits below bind), with no capabilities and ``no_new_privs``. Before the program runs, the guard
sets hard rlimits: one process (no fork, thread, subprocess or multiprocessing), CPU seconds, address
space (``memory_mb``), 1 MiB per written file (which also caps the output) and no core dumps. A
network namespace has only a down loopback, so no connection is possible, not even to
127.0.0.1. Signals cannot reach the harness or any outside process: none are visible from the PID
namespace. At the wall-clock timeout, and always when the program ends, the namespace's init is
killed, which kills everything left in it (``setsid`` and double forks included); ``--die-with-parent``
does the same if the harness dies.

A pass is proven, not assumed. The program's code runs as ``__main__``; the tests run after it in the
same namespace but are compiled separately (so the code cannot swallow them into a string or a
block), with a copy of the builtins taken before the code ran. Only when they return does the guard
print a random per-run token, which the parent requires (with exit status 0): exiting early by any
route (``sys.exit``, ``os._exit``, ``SystemExit``, ``atexit`` handlers, an ``excepthook``) fails.
``strict_returns(f)``, available to the tests, wraps the candidate so that it may only return plain
values: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes`` and ``list``,
``tuple``, ``set``, ``frozenset`` and ``dict`` of those, by exact type, so an object (or a subclass of
``int``, ``str``, ...) whose ``__eq__`` is always true fails before any comparison. ``sys.settrace``
and ``sys.setprofile`` are disabled, so the code cannot jump over the tests' asserts.

What remains possible: the code shares one interpreter with the guard and the tests, so code written
to forge a pass can still do it by tampering with that interpreter: reading the token from the
guard's frame or objects (``sys._getframe``, ``gc``) and printing it before exiting 0, patching
modules the tests import afterwards (``math.isclose``, say), or rewriting memory through ``ctypes``.
It can also read the test's expected values from its caller's frame. None of this reaches outside
the sandbox; it only corrupts that one program's score. Execution stays opt-in
(``--allow-code-exec``), which refuses to start when bubblewrap is missing or cannot create
namespaces (``require_sandbox``).
"""
from __future__ import annotations

import functools
import json
import marshal
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

from harness.errors import UserError

NOBODY = 65534
OUTPUT_CHARS = 4000
OUTPUT_BYTES = 1 << 20   # the per-file limit, so also the most output a program can write
TMPFS_BYTES = 16 << 20
START_S = 30             # for bwrap to set up the namespaces, before the program's own timeout
INSTALL = "bubblewrap (bwrap) is required to execute generated code: apt-get install bubblewrap"

# Runs inside the sandbox with the program, its tests and the token as a marshalled tuple on stdin.
# Everything it uses after the program starts is bound to a local first, so patching builtins or
# modules from the program cannot change it.
GUARD = r'''
import builtins, marshal, os, resource, sys, types
def _guard(cpu_s, memory, output, nobody):
    data = b""
    while chunk := os.read(0, 1 << 20):
        data += chunk
    token, code, tests = marshal.loads(data)
    del data
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[1])  # bwrap's pipes and our /dev/null
    if os.getuid() == 0:  # the harness runs as root: leave the mapped root for the real uid 65534
        os.setgroups([])
        os.setresgid(nobody, nobody, nobody)
        os.setresuid(nobody, nobody, nobody)
    for limit, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_FSIZE, output), (resource.RLIMIT_NPROC, 1)):
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))  # hard limits: the program cannot raise them again
    kind, plain, containers, mapping, failure = type, (type(None), bool, int, float, complex, str, bytes), \
        (list, tuple, set, frozenset), dict, TypeError
    def is_plain(value):
        value_type = kind(value)
        for allowed in plain:
            if value_type is allowed:
                return True
        for allowed in containers:
            if value_type is allowed:
                for item in value:
                    if not is_plain(item):
                        return False
                return True
        if value_type is mapping:
            for key, item in value.items():
                if not (is_plain(key) and is_plain(item)):
                    return False
            return True
        return False
    def strict_returns(function):
        def call(*args, **kwargs):
            result = function(*args, **kwargs)
            if not is_plain(result):
                raise failure(f"strict_returns: a {kind(result).__name__} is not a plain value")
            return result
        return call
    def refuse(*args):
        raise PermissionError("tracing is disabled in the sandbox")
    clean_builtins, flush, write, stdout, stderr = dict(builtins.__dict__), sys.stdout.flush, os.write, \
        sys.stdout, sys.stderr
    sys.settrace = sys.setprofile = refuse
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    sys.argv = ["program.py"]
    exec(compile(code, "program.py", "exec"), main.__dict__)
    if tests:
        main.__dict__.update(__builtins__=clean_builtins, strict_returns=strict_returns)
        exec(compile(tests, "tests.py", "exec"), main.__dict__)
    stdout.flush()
    stderr.flush()
    write(1, b"\n" + token.encode() + b"\n")
    os._exit(0)
_guard(*map(int, sys.argv[1:]))
'''


@dataclass(frozen=True)
class Program:
    """Code that runs as __main__, then tests compiled apart that run in its namespace."""

    code: str
    tests: str = ""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str       # "passed", "timeout", "failed: <last output line>" or "killed: <signal>"
    output: str       # the tail of the child's stdout and stderr, without the token


@functools.cache
def _filesystem() -> tuple[tuple[str, ...], str]:
    """bwrap arguments that show the system libraries, the interpreter, its standard library and
    libpython read-only (nothing else), and the interpreter's path."""
    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    wanted = [executable, os.path.dirname(os.__file__), sysconfig.get_config_var("DESTSHARED") or "",
              "/etc/ld.so.cache"]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        wanted.append(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")))
    args: list[str] = []
    shown: list[str] = []
    made: set[str] = set()

    def show(option: str, source: str, path: str) -> None:
        # bwrap makes the missing folders above a path private to the mapped root (/usr, /etc, /root:
        # 0700), which the program, running as 65534, could not enter: make them 0755 first
        parents = [p for p in reversed(list(_parents(path))) if p not in made]
        args.extend(arg for parent in parents for arg in ("--perms", "0755", "--dir", parent))
        made.update(parents)
        args.extend((option, source, path))
        shown.append(path)

    for top in ("/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            show("--symlink", os.readlink(top), top)
        elif os.path.isdir(top):
            show("--ro-bind", top, top)
    for path in dict.fromkeys(os.path.realpath(p) for p in wanted if p):
        if os.path.exists(path) and not any(path == s or path.startswith(s + os.sep) for s in shown):
            show("--ro-bind", path, path)
    return tuple(args), executable


def _parents(path: str) -> Iterator[str]:
    """The folders above path, nearest first, without the root."""
    while (path := os.path.dirname(path)) != os.sep:
        yield path


def _command(bwrap: str, as_root: bool, info_fd: int, gate_fd: int, cpu_s: int, memory_mb: int) -> list[str]:
    binds, executable = _filesystem()
    # As root, bwrap would map the sandbox's uid to root, for whom RLIMIT_NPROC does not bind; so it
    # waits on the gate while the parent writes a map that keeps root for setup and adds the real
    # uid 65534, which the guard then switches to. Otherwise the gate holds the program until the
    # parent has a pidfd on the namespace's init.
    user = (["--uid", "0", "--gid", "0", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
             "--userns-block-fd", str(gate_fd)] if as_root else
            ["--uid", str(NOBODY), "--gid", str(NOBODY), "--block-fd", str(gate_fd)])
    return [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv",
            "--hostname", "sandbox", "--info-fd", str(info_fd), *user, *binds,
            "--dev", "/dev", "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp",
            executable, "-I", "-S", "-c", GUARD, str(cpu_s), str(memory_mb << 20), str(OUTPUT_BYTES), str(NOBODY)]


def _child_pid(fd: int, deadline: float) -> int | None:
    """The host pid of the namespace's init from bwrap's info fd (None if bwrap failed first)."""
    info = b""
    while time.monotonic() < deadline and select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        info += chunk
        try:
            return int(json.loads(info)["child-pid"])
        except ValueError:
            continue
    return None


def _kill(pidfd: int) -> None:
    """Kill the namespace's init and wait until it is gone, which is when everything else inside is."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return
    select.select([pidfd], [], [], 10)


def _tail(output) -> str:
    output.seek(max(0, os.fstat(output.fileno()).st_size - OUTPUT_CHARS))
    return output.read().decode("utf-8", "replace")


def run_python(program: str | Program, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Execute a program in the sandbox; it passes when it ran to its end (token read, exit 0) in time."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise UserError(INSTALL)
    if isinstance(program, str):
        program = Program(program)
    token = secrets.token_hex(16)
    as_root = os.geteuid() == 0
    with tempfile.TemporaryFile() as data, tempfile.TemporaryFile() as output:
        data.write(marshal.dumps((token, program.code, program.tests)))
        data.seek(0)
        info_r, info_w = os.pipe()
        gate_r, gate_w = os.pipe()
        try:
            process = subprocess.Popen(
                _command(bwrap, as_root, info_w, gate_r, int(timeout_s) + 1, memory_mb),
                stdin=data, stdout=output, stderr=subprocess.STDOUT, pass_fds=(info_w, gate_r))
        finally:
            os.close(info_w)
            os.close(gate_r)
        pidfd = None
        try:
            child = _child_pid(info_r, time.monotonic() + START_S)
            if child is None:
                process.kill()
                process.wait()
                last = (_tail(output).strip().splitlines() or ["no output"])[-1][-300:]
                raise UserError(f"the sandbox did not start: {last}")
            pidfd = os.pidfd_open(child)  # the child is still blocked on the gate, so this is it
            if as_root:
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{child}/{name}", "w") as handle:
                        handle.write(f"0 0 1\n{NOBODY} {NOBODY} 1\n")
            os.write(gate_w, b"x")  # the program starts now; the timeout counts from here
            try:
                process.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
        finally:
            if pidfd is not None:
                _kill(pidfd)  # the namespace's init: everything still inside dies with it
                os.close(pidfd)
            process.kill()
            process.wait()
            os.close(info_r)
            os.close(gate_w)
        text = _tail(output)
    return _result(text, token, process.returncode, timed_out)


def _result(text: str, token: str, returncode: int, timed_out: bool) -> SandboxResult:
    proof = f"\n{token}\n"
    proven = text.endswith(proof)
    if proven:
        text = text[:-len(proof)]
    if timed_out:
        return SandboxResult(False, "timeout", text)
    if returncode == 0 and proven:
        return SandboxResult(True, "passed", text)
    if returncode > 128:  # bwrap reports a program killed by signal n as 128 + n
        number = returncode - 128
        return SandboxResult(False, f"killed: {signal.strsignal(number) or f'signal {number}'}", text)
    if returncode == 0:
        return SandboxResult(False, "failed: exited before its end (no proof that the tests ran)", text)
    last = next((line for line in reversed(text.splitlines()) if line.strip()), f"exit code {returncode}")
    return SandboxResult(False, f"failed: {last[-200:]}", text)


@functools.cache
def unavailable() -> str | None:
    """Why the sandbox cannot run here, or None when a trivial program passes in it."""
    if shutil.which("bwrap") is None:
        return INSTALL
    try:
        result = run_python("pass", timeout_s=10)
        problem = None if result.passed else result.reason
    except (UserError, OSError) as exc:
        problem = str(exc)
    return problem and f"bubblewrap cannot sandbox generated code here ({problem}); it needs user namespaces"


def require_sandbox() -> None:
    """Refuse (one line) when generated code cannot be executed in the sandbox on this machine."""
    reason = unavailable()
    if reason is not None:
        raise UserError(reason)
