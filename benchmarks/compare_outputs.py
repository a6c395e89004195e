"""Did a change alter any output? Token ids and accept lengths of a run, question by question, against
vanilla in the same run and against earlier runs' rows for the same method (e.g. committed results).

    python benchmarks/compare_outputs.py results/NEW results/OLD [results/OLDER ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

from harness.records import read_rows


def answered(path: Path) -> dict[str, dict]:
    """First intact, non-skipped row per question id."""
    rows: dict[str, dict] = {}
    for row in read_rows(path) if path.is_file() else []:
        if not row.get("skipped"):
            rows.setdefault(str(row["question_id"]), row)
    return rows


def compare(new: Path, olds: list[Path]) -> list[str]:
    lines = []
    for suite_dir in sorted((new / "answers").iterdir()):
        vanilla = answered(suite_dir / "vanilla-temperature-0.jsonl")
        for path in sorted(suite_dir.glob("*-temperature-0.jsonl")):
            mine = answered(path)
            same = sum(mine[q]["token_ids"] == vanilla[q]["token_ids"] for q in mine if q in vanilla)
            line = f"{suite_dir.name:8s} {path.name.split('-temperature')[0]:15s} n={len(mine):3d} " \
                   f"tokens equal vanilla's {same}/{len(mine)}"
            for old_dir in olds:
                old = answered(old_dir / "answers" / suite_dir.name / path.name)
                shared = [q for q in mine if q in old]
                if shared:
                    tokens = sum(mine[q]["token_ids"] == old[q]["token_ids"] for q in shared)
                    accepts = sum(mine[q]["choices"][0]["accept_lengths"] == old[q]["choices"][0]["accept_lengths"]
                                  for q in shared)
                    line += f" | {old_dir.name}: tokens {tokens}/{len(shared)}, accept lengths {accepts}/{len(shared)}"
            lines.append(line)
    return lines


if __name__ == "__main__":
    print("\n".join(compare(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])))
