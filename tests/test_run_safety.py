"""Results that cannot be corrupted: one writer per run directory, damaged files repaired without losing
rows, folders two runs wrote stay reportable and resumable, speedup pairs that cross sweeps flagged, and
a question that cannot run recorded and skipped instead of stopping the sweep."""
import json
import subprocess
import sys
from pathlib import Path


from harness import metrics, runner
from harness.cli import main
from harness.decode import Speculative
from harness.records import RowWriter, answer_file, read_rows
from harness.report import build, stats
from harness.report.load import combined, load_runs
from harness.suite import SUITES, Question, Suite
from tests.tiny import tiny_plan

REPO = Path(__file__).resolve().parents[1]
LONG = " ".join(f"w{i % 90}" for i in range(120))   # more tokens than the max_len 64 used below


@SUITES.register("tiny-safety")
class TinySafety(Suite):
    """Four made-up questions; with long=True the first does not fit a 64-token context and the last one's
    second turn does not either (tests only)."""

    long = False

    def questions(self):
        short = [Question(id=str(i), category="words", turns=(f"w{i} w{i + 1} w{i}",)) for i in range(4)]
        if not self.long:
            return short
        return [Question(id="0", category="words", turns=(LONG,)), *short[1:3],
                Question(id="3", category="words", turns=("w3 w4", LONG))]


def plan(tiny_dir, out, **kw):
    return tiny_plan(tiny_dir, out, "tiny-safety", **{"max_new_tokens": 12, **kw})


def cli_run(tiny_dir, out, *extra):
    return main(["run", "--methods", "pld", "--suite", "tiny-safety", "--target", tiny_dir, "--max-new-tokens", "12",
                 "--warmup", "0", "--out", str(out), *extra])


def test_a_second_run_into_a_locked_out_is_refused_with_the_first_ones_pid(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from harness.records import run_dir_lock\n"
                               "with run_dir_lock(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(120)",
         str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli_run(tiny_dir, out, "--limit", "1") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"is in use by another run (pid {holder.pid})" in err[-1] and "Traceback" not in "\n".join(err)
        assert [p.name for p in out.iterdir()] == ["run.lock"], "the refused run wrote nothing"
    finally:
        holder.kill()
        holder.wait()
    assert cli_run(tiny_dir, out, "--limit", "1") == 0, "the lock goes with the process that held it"
    assert len(read_rows(answer_file(out, "tiny-safety", "pld", 0.0))) == 1


def test_a_corrupted_middle_line_is_set_aside_and_every_intact_row_kept(tiny_dir, tmp_path, capsys):
    run_dir = runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",)), argv=["first"])
    path = answer_file(run_dir, "tiny-safety", "vanilla", 0.0)
    lines = path.read_bytes().splitlines(keepends=True)
    first = read_rows(path)
    lines[1] = b'{"question_id": 1, "choi\xff\x00 garbage\n'
    path.write_bytes(b"".join(lines))
    assert [r["question_id"] for r in read_rows(path)] == [0, 2, 3], "rows after the bad line still load"
    capsys.readouterr()
    runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",)), argv=["second"])
    notes = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert len(notes) == 1 and "moved 1 unreadable line(s) (line 2)" in notes[0] and ".bad-lines" in notes[0]
    rows = read_rows(path)
    assert [r["question_id"] for r in rows] == [0, 2, 3, 1], "only the damaged question ran again"
    assert [r["answer_id"] for r in rows[:3]] == [first[i]["answer_id"] for i in (0, 2, 3)]
    assert (path.parent / (path.name + ".bad-lines")).read_bytes() == lines[1]


def test_only_an_incomplete_last_line_is_a_torn_write(tmp_path):
    path = tmp_path / "a.jsonl"
    choice = dict.fromkeys(("turns", "decoding_steps", "new_tokens", "wall_time", "accept_lengths"), [])
    row = {"question_id": 1, "category": "c", "method": "m", "suite": "s", "temperature": 0, "choices": [choice]}
    damaged = json.dumps(dict(row, question_id=5)).replace("suite", "sui\\u0000e")   # valid JSON, a key lost
    path.write_text(json.dumps(row) + "\n[1, 2]\n" + damaged + "\n" + json.dumps(dict(row, question_id=2))
                    + '\n{"question_id": 3')
    assert [r["question_id"] for r in read_rows(path, repair=True)] == [1, 2]
    assert path.read_text() == json.dumps(row) + "\n" + json.dumps(dict(row, question_id=2)) + "\n"
    assert (tmp_path / "a.jsonl.bad-lines").read_text() == "[1, 2]\n" + damaged + "\n", "the torn tail is cut"


def test_a_folder_two_runs_wrote_stays_reportable_and_resumable(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_run(tiny_dir, out, "--limit", "3") == 0
    for method in ("vanilla", "pld"):       # what a second, concurrent run did before runs were locked
        path = answer_file(out, "tiny-safety", method, 0.0)
        rows = read_rows(path)
        with RowWriter(path) as writer:
            for row in rows:
                writer.write(dict(row, answer_id="second", choices=[dict(row["choices"][0], wall_time=[99.0])]))
    frame = metrics.load_frame([answer_file(out, "tiny-safety", "vanilla", 0.0)])
    assert len(frame) == 3 and frame.wall_time.max() < 99.0, "the first row of each question is used"
    capsys.readouterr()
    assert cli_run(tiny_dir, out, "--limit", "4") == 0
    captured = capsys.readouterr()
    assert "duplicate row(s)" in captured.err and "same_text" in captured.out
    for method in ("vanilla", "pld"):
        ids = [r["question_id"] for r in read_rows(answer_file(out, "tiny-safety", method, 0.0))]
        assert ids == [0, 1, 2, 3], "the resume ran only the new question"
    report = (build([out], tmp_path / "report") / "report.md").read_text()
    assert "3 duplicate row(s)" in report and "the first row of each question is used" in report


def test_a_question_that_cannot_run_is_recorded_and_skipped_while_the_sweep_completes(tiny_dir, tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setattr(TinySafety, "long", True)
    out = tmp_path / "run"
    run_dir = runner.run(plan(tiny_dir, out, max_len=64, warmup=1), argv=["first"])
    assert "question 0 skipped: prompt of" in capsys.readouterr().err
    rows = read_rows(answer_file(run_dir, "tiny-safety", "pld", 0.0))
    assert [r["question_id"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["skipped"].startswith("prompt of") and "does not fit max_len 64" in rows[0]["skipped"]
    assert rows[3]["skipped"].startswith("turn 2: prompt of")
    assert "skipped" not in rows[1] and sum(rows[1]["choices"][0]["new_tokens"]) > 0

    def no_more(*args, **kwargs):
        raise AssertionError("a rerun must not try a skipped question again")

    monkeypatch.setattr(Speculative, "decode_turn", no_more)
    runner.run(plan(tiny_dir, out, max_len=64, warmup=1), argv=["second"])
    summary = metrics.summarize(metrics.load_frame(answer_file(run_dir, "tiny-safety", m, 0.0)
                                                   for m in ("vanilla", "pld"))).set_index("method")
    assert summary.loc["pld", "questions"] == 2 and summary.loc["pld", "skipped"] == 2
    assert summary.loc["pld", "tau_pooled"] > 0 and summary.loc["pld", "speedup"] > 0
    report = (build([run_dir], tmp_path / "report") / "report.md").read_text()
    assert "tiny-safety pld T=0: 2 question(s) skipped" in report and "turn 2: prompt of" in report


def test_speedup_pairs_timed_by_different_sweeps_are_flagged(tiny_dir, tmp_path):
    out = tmp_path / "run"
    runner.run(plan(tiny_dir, out, methods=("vanilla",), limit=2), argv=["vanilla first"])
    runner.run(plan(tiny_dir, out, limit=2), argv=["pld later"])
    vanilla, pld = (read_rows(answer_file(out, "tiny-safety", m, 0.0)) for m in ("vanilla", "pld"))
    assert len({r["timing_session"] for r in vanilla}) == 1 and len({r["timing_session"] for r in pld}) == 1
    assert vanilla[0]["timing_session"] != pld[0]["timing_session"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["session"] for s in manifest["sweeps"]] == [vanilla[0]["timing_session"], pld[0]["timing_session"]]
    summary = metrics.summarize(metrics.load_frame(answer_file(out, "tiny-safety", m, 0.0) for m in ("vanilla", "pld")))
    assert summary.set_index("method").loc["pld", "cross_session"] == "2/2"
    cells = stats.cell_stats(combined(load_runs([out]))).set_index("method")
    assert cells.loc["pld", "cross_session"] == 2 and cells.loc["vanilla", "cross_session"] == 0
    report = build([out], tmp_path / "report")
    assert "speedup pairs 2 of 2 questions whose method and vanilla rows were timed by different sweeps" in \
        (report / "report.md").read_text()
    pld_line = next(line for line in (report / "tables" / "summary.md").read_text().splitlines() if "| pld |" in line)
    assert "†" in pld_line
    # Rows written before sessions were recorded still load, as an unknown session that is never "crossed".
    path = answer_file(out, "tiny-safety", "pld", 0.0)
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "timing_session"}) + "\n" for r in pld))
    summary = metrics.summarize(metrics.load_frame(answer_file(out, "tiny-safety", m, 0.0) for m in ("vanilla", "pld")))
    assert "cross_session" not in summary.columns
    assert "2 rows record no timing session" in (build([out], tmp_path / "old") / "report.md").read_text()


def test_scores_average_only_the_scored_rows_and_say_n(tmp_path):
    def row(qid, method, score):
        return {"question_id": qid, "category": "c", "choices": [{"turns": ["t"], "decoding_steps": [2],
                "new_tokens": [2], "wall_time": [1.0], "accept_lengths": [1, 1]}], "method": method,
                "suite": "s", "temperature": 0.0, "scores": {} if score is None else {"accuracy": score}}

    rows = [row(1, "vanilla", 1.0), row(2, "vanilla", None), row(1, "pld", 0.0), row(2, "pld", 1.0)]
    for r in rows:
        with RowWriter(answer_file(tmp_path, "s", r["method"], 0.0)) as writer:
            writer.write(r)
    (tmp_path / "manifest.json").write_text(json.dumps({"settings": {}, "cells": [], "sweeps": []}))
    summary = metrics.summarize(metrics.load_frame([answer_file(tmp_path, "s", m, 0.0) for m in ("vanilla", "pld")]))
    by_method = summary.set_index("method")
    assert by_method.loc["vanilla", ["accuracy", "accuracy_n"]].tolist() == [1.0, 1]
    assert by_method.loc["pld", ["accuracy", "accuracy_n"]].tolist() == [0.5, 2]
    quality = stats.quality(combined(load_runs([tmp_path]))).set_index("method").loc["pld"]
    assert (quality.value, quality.vanilla, quality.questions, quality.answered) == (0.0, 1.0, 1, 2)
