"""How busy the machine was while something was timed: load average and other processes' CPU use.

A wall time means little when other processes shared the cores: four harness processes on a 2-core
machine once made one tree verify 60x slower than a vanilla step. Around each question (and each
cell) the runner samples the 1-minute load average and the machine's busy CPU time (/proc/stat)
and this process's own CPU time (os.times, reaped children included); the difference over the
interval is the CPU other processes used, in cores. Where /proc/stat is missing (not Linux) the
share is unknown (None) and nothing is flagged from it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# Flag a timing as contended when other processes kept more than this share of the cores busy on
# average, or when the load average exceeded the core count by more than LOAD_MARGIN (our own
# threads can fill the cores, nothing more).
OTHER_SHARE_LIMIT = 0.10
LOAD_MARGIN = 0.5


@dataclass(frozen=True)
class Sample:
    wall: float               # time.perf_counter()
    loadavg: float | None     # 1-minute load average
    busy: float | None        # seconds all CPUs spent busy since boot (None without /proc/stat)
    own: float                # this process's CPU seconds (all threads, reaped children)


def _busy_seconds() -> float | None:
    """Non-idle CPU time of the whole machine: user, nice, system, irq, softirq, steal (guest is in user)."""
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def sample() -> Sample:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return Sample(time.perf_counter(), load, _busy_seconds(), sum(os.times()[:4]))


def between(before: Sample, after: Sample) -> dict:
    """The record stored with a row or cell: load averages at both ends, the cores other processes kept
    busy on average over the interval, the core count, and whether this counts as contended."""
    cores = os.cpu_count() or 1
    elapsed = after.wall - before.wall
    other = None
    if before.busy is not None and after.busy is not None and elapsed > 0:
        other = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / elapsed
    record = {"loadavg_before": before.loadavg, "loadavg_after": after.loadavg,
              "other_busy_cores": None if other is None else round(other, 3), "cores": cores}
    record["contended"] = contended(record)
    return record


def of_rows(records: list[dict | None]) -> dict:
    """A cell's load from its rows' records, where the cell has no one interval of its own (Ray workers run
    several cells at once, each row timed on its worker): the worst load seen and how many rows shared the
    machine."""
    found = [r for r in records if r]
    loads = [v for r in found for v in (r.get("loadavg_before"), r.get("loadavg_after")) if v is not None]
    others = [r["other_busy_cores"] for r in found if r.get("other_busy_cores") is not None]
    flagged = sum(bool(contended(r)) for r in found)
    return {"from_rows": len(found), "contended_rows": flagged, "loadavg_max": max(loads, default=None),
            "other_busy_cores_max": max(others, default=None), "contended": flagged > 0 if found else None}


def contended(record: dict | None) -> bool | None:
    """Whether a load record says the timing shared the machine; None when nothing was recorded."""
    if not record:
        return None
    cores = record.get("cores") or 1
    other = record.get("other_busy_cores")
    loads = [v for v in (record.get("loadavg_before"), record.get("loadavg_after")) if v is not None]
    if other is None and not loads:
        return None
    return bool((other is not None and other > OTHER_SHARE_LIMIT * cores)
                or any(v > cores + LOAD_MARGIN for v in loads))
