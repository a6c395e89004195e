"""Replay against real decoding: per method, do replayed rows (`harness run --replay`) have the accept
lengths of the real rows in the same run folder, step for step?

    python benchmarks/validate_replay.py RUN [RUN ...] [--real REAL_RUN ...]

For every cell ``<method>-replay`` of a run folder and the real cell ``<method>`` beside it (or in the
matching ``--real`` folder, the n-th for the n-th run), at each temperature, it prints the questions and
steps whose accept lengths agree, both taus, and whether the real rows' text is the text replayed (the
replay folder's vanilla rows); then each question that differs: the turn, the first step that differs and
the accept lengths from there on. At T = 0 the replayed text is vanilla's; at T > 0 a real decode samples
its own text, so replay it along that text (benchmarks/own_text_replay.py) and compare it here.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.records import read_rows
from harness.replay import SUFFIX


def per_turn(row: dict) -> list[list[int]]:
    """A row's accept lengths split by turn."""
    lengths, steps, turns = row["choices"][0]["accept_lengths"], row["choices"][0]["decoding_steps"], []
    for n in steps:
        turns.append(lengths[:n])
        lengths = lengths[n:]
    return turns


def compare(real: list[dict], replayed: list[dict], vanilla: list[dict]) -> tuple[dict, list[str]]:
    """Agreement counts of one cell, and one line per question that differs."""
    by_id = {str(r["question_id"]): r for r in replayed if not r.get("skipped")}
    tokens = {str(r["question_id"]): r.get("token_ids") for r in vanilla}
    counts = dict(questions=0, same_questions=0, steps=0, same_steps=0, real_tokens=0, real_steps=0,
                  replay_tokens=0, replay_steps=0, real_kept_vanilla=0)
    notes = []
    for row in real:
        qid = str(row["question_id"])
        if row.get("skipped") or qid not in by_id:
            continue
        mine, theirs = per_turn(row), per_turn(by_id[qid])
        counts["questions"] += 1
        counts["same_questions"] += mine == theirs
        counts["real_kept_vanilla"] += row.get("token_ids") == tokens.get(qid)
        for name, turns in (("real", mine), ("replay", theirs)):
            counts[f"{name}_tokens"] += sum(map(sum, turns))
            counts[f"{name}_steps"] += sum(map(len, turns))
        for turn, (a, b) in enumerate(zip(mine, theirs)):
            counts["steps"] += max(len(a), len(b))
            counts["same_steps"] += sum(x == y for x, y in zip(a, b))
            if a != b:
                first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                notes.append(f"question {qid} turn {turn + 1}: first difference at step {first} "
                             f"(of {len(a)}); real {a[first:first + 8]}, replay {b[first:first + 8]}")
    return counts, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding replayed cells")
    parser.add_argument("--real", nargs="+", type=Path, default=None,
                        help="run folders holding the real cells, one per run (default: the runs themselves)")
    args = parser.parse_args()
    reals = args.real or args.runs
    if len(reals) != len(args.runs):
        parser.error("give one --real folder per run")
    header = ("| suite | T | method | questions equal | steps equal | tau real | tau replay | real text = text replayed |\n"
              "|---|---|---|---|---|---|---|---|")
    lines, details = [header], []
    for run, real_run in zip(args.runs, reals):
        for replay_file in sorted(run.glob(f"answers/*/*{SUFFIX}-temperature-*.jsonl")):
            method, temperature = replay_file.name.removesuffix(".jsonl").split(f"{SUFFIX}-temperature-")
            suite = replay_file.parent.name
            real_file = real_run / "answers" / suite / f"{method}-temperature-{temperature}.jsonl"
            vanilla_file = replay_file.with_name(f"vanilla-temperature-{temperature}.jsonl")
            if not vanilla_file.is_file():
                vanilla_file = real_file.with_name(vanilla_file.name)
            if not real_file.is_file():
                continue
            c, notes = compare(read_rows(real_file), read_rows(replay_file), read_rows(vanilla_file))
            lines.append(f"| {suite} | {temperature} | {method} | {c['same_questions']}/{c['questions']} | "
                         f"{c['same_steps']}/{c['steps']} | {c['real_tokens'] / max(c['real_steps'], 1):.3f} | "
                         f"{c['replay_tokens'] / max(c['replay_steps'], 1):.3f} | "
                         f"{c['real_kept_vanilla']}/{c['questions']} |")
            details += [f"- {suite} T={temperature} {method}: {note}" for note in notes]
    print("\n".join(lines))
    if details:
        print("\nQuestions whose accept lengths differ:\n" + "\n".join(details))


if __name__ == "__main__":
    main()
