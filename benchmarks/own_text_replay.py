"""Replay each method of a real run along the texts its own decodes sampled, then compare step by step.

    python benchmarks/own_text_replay.py REAL_RUN OUT METHOD [METHOD ...] -- HARNESS_RUN_FLAGS

At T > 0 a real decode samples its own text, so replay along vanilla's answers cannot be checked against it
question by question. With deterministic drafts, though, the accept lengths are a function of the text
(harness/replay.py), so replaying a method along the text its real decode emitted must give that decode's
accept lengths exactly. For each METHOD, OUT/<method>/ gets the method's real rows (every temperature) as its
baseline rows, `harness run --methods vanilla,METHOD --replay HARNESS_RUN_FLAGS --out OUT/<method>` replays
the method along them (pass the real run's suites, temperature, limit, max_new_tokens and checkpoints; each
method gets only its own ``--checkpoint``), and benchmarks/validate_replay.py compares the replayed cells with REAL_RUN's real ones.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.records import RowWriter, read_rows


def copy_as_baseline(real_run: Path, out: Path, method: str) -> None:
    """The method's real rows written into out as vanilla's rows (the text the replay will follow)."""
    files = sorted(real_run.glob(f"answers/*/{method}-temperature-*.jsonl"))
    if not files:
        raise SystemExit(f"{real_run}: no rows of {method}")
    for source in files:
        target = out / "answers" / source.parent.name / source.name.replace(f"{method}-", "vanilla-", 1)
        if target.exists():
            continue   # a rerun resumes the replay; the baseline rows stay as first written
        with RowWriter(target) as writer:
            for row in read_rows(source):
                row["method"] = "vanilla"
                row["model_id"] = row.get("model_id", "").replace(f"{method}-temperature-", "vanilla-temperature-", 1)
                writer.write(row)


def own_flags(flags: list[str], method: str) -> list[str]:
    """flags without the --checkpoint pairs of other methods."""
    kept, i = [], 0
    while i < len(flags):
        if flags[i] == "--checkpoint" and i + 1 < len(flags):
            if flags[i + 1].split("=", 1)[0] == method:
                kept += flags[i:i + 2]
            i += 2
            continue
        kept.append(flags[i])
        i += 1
    return kept


def main() -> None:
    if "--" not in sys.argv or sys.argv.index("--") < 4:
        raise SystemExit(__doc__)
    split = sys.argv.index("--")
    real_run, out, methods, flags = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:split], sys.argv[split + 1:]
    for method in methods:
        copy_as_baseline(real_run, out / method, method)
        subprocess.run([sys.executable, "-m", "harness", "run", "--methods", f"vanilla,{method}", "--replay",
                        *own_flags(flags, method), "--out", str(out / method)], check=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("validate_replay.py")),
                    *(str(out / m) for m in methods), "--real", *([str(real_run)] * len(methods))], check=True)


if __name__ == "__main__":
    main()
