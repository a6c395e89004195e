"""Draft time per decoding step of each method in a run (the rows' draft time over their decoding steps,
pooled over questions): python benchmarks/draft_time_per_step.py RUN_DIR."""
import sys
from pathlib import Path

from harness import metrics

frame = metrics.load_frame(sorted(Path(sys.argv[1]).glob("answers/*/*.jsonl")))
totals = frame.groupby(["suite", "method", "temperature"])[["draft_time", "steps"]].sum()
for (suite, method, temperature), row in totals.iterrows():
    print(f"{suite:8s} {method:10s} T={temperature:g}  draft ms/step {1000 * row.draft_time / row.steps:7.1f}"
          f"  steps {int(row.steps)}")
