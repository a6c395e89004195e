"""Benchmark: what the HumanEval sandbox costs per completion, on the 164 canonical solutions.

Each canonical solution runs through the same path as a scored answer (suites.humaneval.program, then
harness.sandbox.run_python: bubblewrap, the guard, the tests, the token), one at a time, so the
figure is the wall time of one completion, sandbox start-up and the problem's own tests included.
Prints how many pass (all 164 should) and the mean and slowest seconds per completion.

Usage: python benchmarks/sandbox_cost.py [--data-dir DIR] [--limit N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.sandbox import require_sandbox, run_python
from suites.humaneval import HumanEval, program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $HARNESS_DATA_DIR")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    args = parser.parse_args()
    require_sandbox()
    questions = HumanEval(data_dir=args.data_dir).questions()[:args.limit]
    seconds, failed = [], []
    for question in questions:
        start = time.perf_counter()
        result = run_python(program(question.reference, question.reference["canonical_solution"]))
        seconds.append(time.perf_counter() - start)
        if not result.passed:
            failed.append(f"{question.id}: {result.reason}")
    print(f"passed {len(questions) - len(failed)}/{len(questions)}")
    print(f"seconds per completion: mean {sum(seconds) / len(seconds):.3f}, max {max(seconds):.3f}, "
          f"total {sum(seconds):.1f}")
    for line in failed:
        print(f"failed {line}")


if __name__ == "__main__":
    main()
