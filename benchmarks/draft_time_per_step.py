"""Draft time per decoding step (sum of draft_time / sum of decoding_steps) per method and suite of a run: python benchmarks/draft_time_per_step.py RUN_DIR."""
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
for f in sorted(run.glob("answers/*/*.jsonl")):
    draft = steps = 0.0
    for line in f.read_text().splitlines():
        row = json.loads(line)
        draft += sum(row.get("draft_time") or [])
        steps += sum(sum(ch.get("decoding_steps") or []) for ch in row.get("choices", []))
    if steps:
        print(f"{f.parent.name:8s} {f.stem:28s} draft ms/step {1000 * draft / steps:7.1f}  steps {int(steps)}")
