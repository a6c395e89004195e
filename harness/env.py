"""The environment a run happened in, for its manifest: hardware, versions and the harness commit."""
from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"   # the tested versions that `make setup` installs


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def capture() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "lock_drift": lock_drift(LOCK),
        "harness_commit": _git("rev-parse", "HEAD"),
        "harness_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def lock_drift(lock: Path) -> list[str] | None:
    """Installed packages whose version differs from the lock file, as ``name installed (lock locked)``: empty
    when the run used the tested set, None without a lock file (an installed package, not a checkout)."""
    if not lock.is_file():
        return None
    drift = []
    for line in lock.read_text().splitlines():
        pinned = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if pinned:
            installed = _version(pinned[1])
            if installed != pinned[2]:
                drift.append(f"{pinned[1]} {installed or 'not installed'} (lock {pinned[2]})")
    return drift


def worker(device: torch.device | str) -> dict:
    """Who timed a row: host, process and device. ``device_type`` is what speedups must share: the GPU model,
    or the CPU model with the thread count (a 1-thread and a 2-thread row are not one machine's speed)."""
    device = torch.device(device)
    if device.type == "cuda":
        kind = f"cuda {torch.cuda.get_device_name(device)}"
    else:
        kind = f"{device.type} {_cpu_model()} ({torch.get_num_threads()} threads)"
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(device), "device_type": kind}
