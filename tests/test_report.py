"""Reports: estimators and tables on hand-built rows with known answers, a report from a tiny-target run
with every table and figure present, paper tables against anchors.toml, and a headless screenshot."""
import argparse
import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import metrics, runner
from harness.errors import UserError
from harness.records import ESTIMATORS, RowWriter, answer_file
from harness.report import add_arguments, build, paper, run, stats, tables
from harness.report.load import combined, load_runs
from harness.suite import SUITES, Question, Suite
from tests.tiny import load_benchmark, save_tiny_target

CHROMIUM = Path("/usr/bin/chromium")
TABLES = ["summary", "paired", "claims", "speedup_by_task", "tau_by_task", "latency", "acceptance_by_depth", "quality",
          "environment"]


def make_row(qid, method, temperature, accept, wall, text, task="mt_bench", score=None, lossless=True,
             times=(0.0, 0.0, 0.0), suite="specbench"):
    """One question, one turn; new_tokens and decoding_steps follow from the accept lengths."""
    return {"question_id": qid, "category": task, "answer_id": f"{method}{qid}", "model_id": "m", "tstamp": 0.0,
            "choices": [{"index": 0, "turns": [text], "decoding_steps": [len(accept)], "new_tokens": [sum(accept)],
                         "wall_time": [wall], "accept_lengths": accept}],
            "method": method, "suite": suite, "task": task, "temperature": temperature, "lossless": lossless,
            "prefill_time": [times[0]], "draft_time": [times[1]], "verify_time": [times[2]], "tree_nodes": [0],
            "stop_reasons": ["eos"], "token_ids": [[]], "scores": {} if score is None else {"accuracy": score}}


def write_run(run_dir: Path, rows: list[dict], extra_cells: tuple = (), status: str = "complete") -> Path:
    cells = []
    for row in rows:
        with RowWriter(answer_file(run_dir, row["suite"], row["method"], row["temperature"])) as writer:
            writer.write(row)
        cell = {"suite": row["suite"], "method": row["method"], "temperature": row["temperature"]}
        if cell not in cells:
            cells.append(cell)
    manifest = {"schema_version": 1, "settings": {"device": "cpu", "target": "hand-built", "max_new_tokens": 32},
                "estimators": ESTIMATORS, "cells": cells + list(extra_cells),
                "sweeps": [{"argv": ["test"], "env": {"torch": "x", "cpu": "test cpu"}, "status": status}]}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


# vanilla: q1 10 tokens in 1 s, q2 20 tokens in 4 s -> mean tok/s 7.5.
# pld:     q1 accept [1,3,3,3] (10 tokens, 4 steps) in 0.5 s, q2 [2,2,1,5,5,5] (20 tokens, 6 steps) in 1 s.
VANILLA = [make_row(1, "vanilla", 0.0, [1] * 10, 1.0, "a", score=1.0), make_row(2, "vanilla", 0.0, [1] * 20, 4.0, "b",
                                                                                 task="qa", score=1.0)]
PLD = [make_row(1, "pld", 0.0, [1, 3, 3, 3], 0.5, "a", score=1.0, times=(0.05, 0.1, 0.3)),
       make_row(2, "pld", 0.0, [2, 2, 1, 5, 5, 5], 1.0, "different", task="qa", score=0.0, times=(0.05, 0.2, 0.6))]


@pytest.fixture
def hand_run(tmp_path):
    return write_run(tmp_path / "hand", VANILLA + PLD)


def test_estimators_on_hand_built_rows(hand_run):
    frame = combined(load_runs([hand_run]))
    cells = stats.cell_stats(frame).set_index("method")
    pld = cells.loc["pld"]
    assert pld.tau == pytest.approx(3.0)                       # 30 tokens / 10 steps
    assert pld.tau_macro == pytest.approx((2.5 + 20 / 6) / 2)
    assert pld.tps == pytest.approx(20.0)
    assert pld.speedup == pytest.approx(20 / 7.5)              # ratio of mean per-question tok/s
    assert pld.speedup_total == pytest.approx((30 / 1.5) / (30 / 5))
    assert pld.tau_lo <= pld.tau <= pld.tau_hi and pld.speedup_lo <= pld.speedup <= pld.speedup_hi
    assert (pld.same_text, pld.compared) == (1, 2)
    assert cells.loc["vanilla"][["tau", "tau_lo", "tau_hi", "speedup"]].tolist() == [1.0, 1.0, 1.0, 1.0]
    by_task = stats.cell_stats(frame, by_task=True).set_index(["method", "task"])
    assert by_task.loc[("pld", "qa")].speedup == pytest.approx(20 / 5)
    assert by_task.loc[("pld", "mt_bench")].tau == pytest.approx(2.5)


def test_acceptance_latency_and_quality_golden(hand_run):
    frame = combined(load_runs([hand_run]))
    hist, depth = stats.acceptance(frame)
    pld_hist = hist[hist.method == "pld"].set_index("accept_length").share
    assert pld_hist.to_dict() == pytest.approx({1: 0.2, 2: 0.2, 3: 0.3, 5: 0.3})
    assert depth.method.unique().tolist() == ["pld"]            # vanilla drafts nothing
    assert depth.set_index("depth").p_accept.to_dict() == pytest.approx({1: 0.8, 2: 0.6, 3: 0.3, 4: 0.3})
    lat = stats.latency(frame).set_index("method").loc["pld"]
    assert [lat.prefill, lat.draft, lat.verify, lat.other] == pytest.approx([10 / 3, 10.0, 30.0, 20 / 3])
    qual = stats.quality(frame).set_index("method").loc["pld"]
    assert (qual.value, qual.vanilla, qual.questions) == (0.5, 1.0, 2)


def test_ratio_interval_is_exact_for_a_constant_ratio_and_reproducible():
    assert metrics.ratio_interval([2, 4, 6], [1, 2, 3]) == pytest.approx((2.0, 2.0))
    assert metrics.ratio_interval([1, 5, 2, 9], [1, 1, 1, 1]) == metrics.ratio_interval([1, 5, 2, 9], [1, 1, 1, 1])
    low, high = metrics.ratio_interval([1, 5, 2, 9], [1, 1, 1, 1])
    assert 1 <= low < 17 / 4 < high <= 9


def test_gaps_are_notes_and_dashes_not_errors(tmp_path):
    rows = VANILLA + PLD + [
        make_row(1, "pld", 1.0, [1, 2], 0.1, "x"),                            # T=1 without vanilla
        make_row(1, "medusa", 0.0, [4, 4], 0.2, "y", lossless=False),         # partial, lossy, no T=1
    ]
    empty_cell = {"suite": "specbench", "method": "eagle2", "temperature": 0.0}
    run_dir = write_run(tmp_path / "gappy", rows, extra_cells=(empty_cell,), status="interrupted")
    out = build([run_dir], tmp_path / "report")
    text = (out / "report.md").read_text()
    for note in ("no vanilla baseline, so no speedup", "medusa T=0: partial, 1 of 2 questions",
                 "medusa: no results at T=1", "eagle2 T=0: listed in the manifest but has no rows",
                 "ended with status interrupted"):
        assert note in text
    summary = (out / "tables" / "summary.md").read_text()
    assert "medusa (NOT LOSSLESS)" in summary
    t1_pld = next(line for line in summary.splitlines() if "| 1 | pld |" in line)
    assert "—" in t1_pld                                                     # no speedup without a baseline
    assert 'class="lossy"' in (out / "index.html").read_text()


def test_compare_puts_runs_side_by_side_with_ratios(tmp_path):
    first = write_run(tmp_path / "cpu", VANILLA + PLD)
    faster = [dict(r, choices=[dict(r["choices"][0], wall_time=[r["choices"][0]["wall_time"][0] / 2])])
              if r["method"] == "pld" else r for r in VANILLA + PLD]
    second = write_run(tmp_path / "gpu", faster)
    out = build([first, second], tmp_path / "report", compare=True)
    table = (out / "tables" / "comparison.md").read_text()
    header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    overall = next(line for line in table.splitlines() if "| overall | pld |" in line)
    cells = dict(zip(header, [c.strip() for c in overall.strip("|").split("|")]))
    assert cells["tau ratio gpu/cpu"] == "1.00" and cells["speedup ratio gpu/cpu"] == "2.00"
    with pytest.raises(UserError, match="two or more"):
        build([first], tmp_path / "single", compare=True)



def test_a_group_of_folders_is_one_run_and_refuses_what_is_not_one_experiment(tmp_path):
    """NAME=DIR,DIR: suites run into separate folders make one run (one paper row, its mean); folders that
    differ in a draft's checkpoint or hold the same cell are refused with a message saying which."""
    on_mtbench = [dict(r, suite="mtbench") for r in VANILLA + PLD]
    first, second = write_run(tmp_path / "a", VANILLA + PLD), write_run(tmp_path / "b", on_mtbench)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--results", f"both={first},{second}", "--out", str(tmp_path / "report")])
    [merged] = load_runs(args.results)
    assert merged.name == "both" and merged.members == (first, second)
    assert set(merged.frame.suite) == {"specbench", "mtbench"} and set(merged.frame.run) == {"both"}
    run(args)
    summary = (tmp_path / "report" / "tables" / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith(("| specbench | 0 |", "| mtbench | 0 |"))]
    assert len(rows) == 4 and "| Run |" not in summary                   # one run: two suites x vanilla, pld
    assert f"{first}, {second}" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(UserError, match="both hold specbench"):
        load_runs(parser.parse_args(["--results", f"g={first},{write_run(tmp_path / 'c', VANILLA)}"]).results)
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["settings"]["checkpoints"] = {"pld": "other"}
    (second / "manifest.json").write_text(json.dumps(manifest))
    manifest["settings"]["checkpoints"] = {"pld": "one"}
    (first / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"pld is one in {first} but other in {second}"):
        load_runs(args.results)
    with pytest.raises(UserError, match="a group is NAME=DIR"):
        parser.parse_args(["--results", f"={first}"])

def test_anchors_file_is_well_formed():
    anchors = paper.load_anchors()
    assert set(anchors["papers"]) == {"coral", "eagle2", "hass", "fspad", "medusa", "specbench"}
    for spec in anchors["papers"].values():
        for table in spec["tables"]:
            assert table["source"] and table["confidence"] and table["name"]
            for row in table["rows"]:
                assert "status" in row or "speedup" in row
    raw = tomllib.loads(paper.ANCHORS.read_text())
    eagle2_a100 = raw["papers"]["specbench"]["tables"][1]["rows"][1]     # docs/reference.md §5.4b, EAGLE2 row
    assert eagle2_a100["speedup"] == [2.84, 1.88, 2.34, 2.15, 2.79, 2.13, 2.36] and eagle2_a100["tau"][-1] == 4.34


def test_paper_tables_put_ours_beside_published(hand_run, tmp_path):
    out = build([hand_run], tmp_path / "report", paper=["specbench"])
    md = (out / "paper_specbench.md").read_text()
    assert "| PLD | 0 | paper | 1.64 / — |" in md                           # §5.4a, conversation column
    ours = next(line for line in md.splitlines() if "| pld | 0 | ours (hand) |" in line)
    assert ours.split("|")[4].strip() == f"{20 / 10:.2f} / {2.5:.2f}"    # Conv: mt_bench task, speedup / tau
    assert ours.split("|")[10].strip() == f"{20 / 7.5:.2f} / {3.0:.2f}"  # Overall: the whole suite
    assert "\\begin{tabular}" in (out / "paper_specbench.tex").read_text()
    assert "RTX 3090" in (out / "paper_specbench.html").read_text()
    coral = (build([hand_run], tmp_path / "coral", paper=["coral"]) / "paper_coral.md").read_text()
    paper_rows = [line for line in coral.splitlines() if "| paper |" in line]
    assert len(paper_rows) == 18 and all("pending-primary" in line for line in paper_rows)
    assert not any(ch.isdigit() for line in paper_rows for ch in line.split("| paper |")[1])
    with pytest.raises(UserError, match="unknown paper"):
        build([hand_run], tmp_path / "x", paper=["nosuch"])


def test_a_paper_cell_on_part_of_a_suite_says_so(tmp_path):
    """pld answered one of vanilla's two questions: its whole-suite cell and the mean over columns say they stand
    on part of the suite, which the published figure beside them does not."""
    out = build([write_run(tmp_path / "part", VANILLA + PLD[:1])], tmp_path / "report", paper=["specbench"])
    ours = next(line for line in (out / "paper_specbench.md").read_text().splitlines() if "| pld | 0 | ours" in line)
    cells = [c.strip() for c in ours.split("|")]
    assert cells[4] == f"{20 / 10:.2f} / {2.5:.2f}"                      # Conv: its one question is the whole task
    assert cells[10] == f"{20 / 10:.2f} / {2.5:.2f} (n=1/2)"            # Overall: one of the suite's two
    suites = [dict(r, suite=suite, method=r["method"].replace("pld", "hass")) for suite in ("specbench", "gsm8k",
              "humaneval") for r in VANILLA + PLD if (suite, r["method"], r["question_id"]) != ("humaneval", "pld", 2)]
    out = build([write_run(tmp_path / "three", suites)], tmp_path / "hass", paper=["hass"])
    ours = next(line for line in (out / "paper_hass.md").read_text().splitlines() if "| hass | 0 | ours" in line)
    assert "(n=1/2) |" in ours and ours.rstrip(" |").endswith("(part) | measured")   # HumanEval, then the mean


def test_several_papers_come_from_one_build(hand_run, tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--results", str(hand_run), "--out", str(tmp_path / "both"),
                              "--paper", "coral", "specbench", "--paper", "hass"])
    assert args.paper == ["coral", "specbench", "hass"]
    run(args)
    for name in args.paper:
        alone = build([hand_run], tmp_path / name, paper=[name])
        assert (tmp_path / "both" / f"paper_{name}.md").read_text() == (alone / f"paper_{name}.md").read_text()
    with pytest.raises(UserError, match="unknown paper 'nosuch'; known: "):     # checked before anything is written
        build([hand_run], tmp_path / "none", paper=["hass", "nosuch"])
    assert not (tmp_path / "none").exists()


def test_cli_entry_points(hand_run, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run(parser.parse_args(["--results", str(hand_run), "--out", str(tmp_path / "cli")]))
    assert "index.html" in capsys.readouterr().out
    with pytest.raises(UserError, match="no run directory"):
        run(parser.parse_args(["--results", str(tmp_path / "cli" / "plots")]))


@SUITES.register("tiny-report")
class TinyReport(Suite):
    """Four made-up questions in two tasks, with a made-up score (tests only)."""

    def questions(self):
        return [Question(id=str(i), category="words", task="echo" if i % 2 else "count",
                         turns=(f"w{i} w{i + 1} w{i} w{i + 1} w{i + 2}",)) for i in range(4)]

    def score(self, question, answers):
        return {"accuracy": float(int(question.id) % 2)}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-report")
    plan = runner.Plan(methods=("vanilla", "pld"), suites=("tiny-report",), target=save_tiny_target(root / "target"),
                       max_new_tokens=16, temperatures=(0.0, 1.0), out=root / "run", warmup=0)
    run_dir = runner.run(plan, argv=["test"])
    return build([run_dir], root / "report", paper=["specbench"])


def test_a_report_from_a_tiny_run_has_every_table_and_figure(tiny_report):
    html = (tiny_report / "index.html").read_text()
    for key in TABLES:
        assert f'data-table="{key}"' in html
    figures = ["speedup", "tau", "latency", "accept_hist", "accept_depth"]
    for name in figures:
        assert f'id="figure-{name}_run_tiny-report"' in html
        assert (tiny_report / "plots" / f"{name}_run_tiny-report.png").stat().st_size > 5000
        assert (tiny_report / "plots" / f"{name}_run_tiny-report.svg").is_file()
    assert html.count('src="data:image/png;base64,') == len(figures)
    assert "<script" not in html and "http" not in html.split("</style>")[0]   # self-contained, offline
    md = (tiny_report / "report.md").read_text()
    assert "Acceptance rate by draft depth" in md and "Quality beside vanilla" in md and "RTX 3090" in md


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_headless_screenshot_of_the_report(tiny_report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,4000",
                    (tiny_report / "index.html").resolve().as_uri()], check=True, capture_output=True, timeout=60)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 4000)
    pixels = np.asarray(image.resize((140, 400))).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50                 # text, tables and plots, not a blank page
    assert shot.stat().st_size > 50_000


def on(device_type, rows):
    return [{**row, "worker": {"host": "h", "pid": 1, "device": "x", "device_type": device_type}} for row in rows]


def test_speedups_pair_and_pool_only_within_one_device_type(tmp_path):
    # Same device type for both questions: the hand-built speedup stands.
    same = metrics.summarize(metrics.load_frame(write_run(tmp_path / "same", on("gpu A", VANILLA + PLD))
                                                .glob("answers/*/*.jsonl")))
    assert same.set_index("method").loc["pld", "speedup"] == pytest.approx(20 / 7.5)
    # q1 on A for both, q2's pld on B but its vanilla on A: q2 does not pair, q1 alone gives the speedup.
    mixed_pair = on("gpu A", VANILLA + PLD[:1]) + on("gpu B", PLD[1:])
    summary = metrics.summarize(metrics.load_frame(write_run(tmp_path / "pair", mixed_pair).glob("answers/*/*.jsonl")))
    assert summary.set_index("method").loc["pld", "speedup"] == pytest.approx((10 / 0.5) / (10 / 1.0))
    # Each question paired on its own device type, but two types in the cell: no pooled speedup, a note says so.
    two_types = on("gpu A", VANILLA[:1] + PLD[:1]) + on("gpu B", VANILLA[1:] + PLD[1:])
    run_dir = write_run(tmp_path / "two", two_types)
    summary = metrics.summarize(metrics.load_frame(run_dir.glob("answers/*/*.jsonl")))
    assert np.isnan(summary.set_index("method").loc["pld", "speedup"])
    report = (build([run_dir], out=tmp_path / "report") / "report.md").read_text()
    assert "several device types (gpu A; gpu B)" in report and "not pooled" in report


def test_rows_round_trip_through_the_typed_row():
    from harness.records import Row

    for row in VANILLA + PLD + [dict(VANILLA[0], skipped="too long", future_field=[1, 2])]:
        typed = Row.from_json(row)
        assert typed.to_json() == {**row, "choices": [{"index": 0, **row["choices"][0]}]}
    old = {"question_id": "q", "category": "c", "method": "m", "suite": "s", "temperature": 0.0,
           "choices": [{"turns": ["t"], "decoding_steps": [1], "new_tokens": [1], "wall_time": [0.1],
                        "accept_lengths": [1]}]}
    typed = Row.from_json(old)
    assert (typed.lossless, typed.skipped, typed.replayed, typed.device_type, typed.extra) == (None, "", False, "", {})
    assert set(typed.to_json()) == set(old)


def test_paired_differences_on_hand_built_rows(hand_run):
    frame = combined(load_runs([hand_run]))
    pair = stats.paired(frame).set_index("method").loc["pld"]
    assert pair.reference == "vanilla" and pair.questions == 2
    assert pair.tau_diff == pytest.approx(3.0 - 1.0)
    assert pair.tau_q_diff == pytest.approx(((2.5 - 1) + (20 / 6 - 1)) / 2)
    assert (pair.tau_q_above, pair.tau_q_below) == (2, 0)
    assert pair.tau_lo <= pair.tau_diff <= pair.tau_hi and pair.tau_verdict == "above"
    assert pair.speedup_diff == pytest.approx(20 / 7.5 - 1)    # pld's speedup minus vanilla's (1)
    same = metrics.paired_difference(frame[frame.method == "pld"], frame[frame.method == "pld"])
    assert (same["tau_diff"], same["tau_lo"], same["tau_hi"], same["tau_verdict"]) == (0, 0, 0, "not distinguishable")
    assert metrics.verdict(-0.1, -0.01) == "below" and metrics.verdict(float("nan"), 1) == ""


def test_paired_bootstrap_resamples_questions_jointly():
    """Two methods whose per-question tau moves together: a paired interval is narrow where an unpaired one
    would straddle 0; the same resampled question ids serve both methods."""
    from harness.records import Row

    rng = np.random.default_rng(1)
    rows = []
    for qid in range(30):
        base = int(rng.integers(1, 4))
        rows.append(make_row(qid, "a", 0.0, [base] * 4 + [base + 1], 1.0, "x"))
        rows.append(make_row(qid, "b", 0.0, [base] * 5, 1.0, "x"))
    frame = pd.DataFrame([metrics.question_record(Row.from_json(r), "vanilla") for r in rows])
    result = metrics.paired_difference(frame[frame.method == "a"], frame[frame.method == "b"])
    assert result["tau_diff"] == pytest.approx(0.2) and result["tau_verdict"] == "above"
    assert result["tau_hi"] - result["tau_lo"] < 0.05


def test_paired_contrast_tests_a_change_of_margin():
    """Difference of differences over four cells: a margin that grows by exactly 0.2 on every question is
    'above' with a narrow interval; weights (1, -1) reproduce paired_difference's pooled figures exactly."""
    from harness.records import Row

    rng = np.random.default_rng(2)
    rows = []
    for qid in range(30):
        base = int(rng.integers(1, 4))
        rows += [make_row(qid, "a2", 0.0, [base] * 4 + [base + 2], 1.0, "x"),   # +0.4 over b2
                 make_row(qid, "b2", 0.0, [base] * 5, 1.0, "x"),
                 make_row(qid, "a1", 0.0, [base] * 4 + [base + 1], 1.0, "x"),   # +0.2 over b1
                 make_row(qid, "b1", 0.0, [base] * 5, 1.0, "x")]
    frame = pd.DataFrame([metrics.question_record(Row.from_json(r), "vanilla") for r in rows])
    cells = [frame[frame.method == m] for m in ("a2", "b2", "a1", "b1")]
    change = metrics.paired_contrast(cells, [1.0, -1.0, -1.0, 1.0])
    assert change["questions"] == 30 and change["contrast"] == pytest.approx(0.2)
    assert change["verdict"] == "above" and change["lo"] <= 0.2 <= change["hi"]
    two = metrics.paired_contrast(cells[:2], [1.0, -1.0])
    diff = metrics.paired_difference(cells[0], cells[1])
    assert (two["contrast"], two["lo"], two["hi"]) == (diff["tau_diff"], diff["tau_lo"], diff["tau_hi"])
    assert metrics.paired_contrast([cells[0], cells[1].iloc[:0]], [1.0, -1.0]) == {"questions": 0}


def test_baseline_is_data_and_report_baseline_picks_the_reference(hand_run, tmp_path):
    manifest = json.loads((hand_run / "manifest.json").read_text())
    assert load_runs([hand_run])[0].baseline == "vanilla"            # runs recorded before it was named
    cells = stats.cell_stats(combined(load_runs([hand_run], baseline="pld"))).set_index("method")
    assert cells.loc["vanilla"].speedup == pytest.approx(7.5 / 20) and cells.loc["pld"].speedup == 1.0
    (hand_run / "manifest.json").write_text(json.dumps(dict(manifest, baseline="pld")))
    assert load_runs([hand_run])[0].baseline == "pld"
    pairs = stats.paired(combined(load_runs([hand_run]))).set_index("method")
    assert pairs.loc["vanilla"].reference == "pld" and pairs.loc["vanilla"].tau_verdict == "below"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--results", str(hand_run), "--out", str(tmp_path / "r"), "--baseline", "vanilla"])
    run(args)
    assert "Paired differences between methods" in (tmp_path / "r" / "report.md").read_text()


def test_cli_summary_and_report_share_one_estimator_path(hand_run):
    summary = metrics.summarize(metrics.load_frame(hand_run.glob("answers/*/*.jsonl"))).set_index("method")
    cells = stats.cell_stats(combined(load_runs([hand_run]))).set_index("method")
    for method in ("vanilla", "pld"):
        assert summary.loc[method, "tau_pooled"] == cells.loc[method, "tau"]
        assert summary.loc[method, "speedup"] == cells.loc[method, "speedup"]
        assert summary.loc[method, "tok_per_s"] == cells.loc[method, "tps_total"]
    assert summary.loc["pld", "same_text"] == "1/2" and summary.loc["pld", "lossless"] == "FAILED"   # q2 differs


def test_contended_timings_are_flagged_and_replayed_rows_give_tau_only(tmp_path):
    from harness import machine_load

    busy = {"loadavg_before": 3.5, "loadavg_after": 3.9, "other_busy_cores": 1.2, "cores": 2}
    quiet = {"loadavg_before": 1.0, "loadavg_after": 1.1, "other_busy_cores": 0.05, "cores": 2}
    assert machine_load.contended(busy) and not machine_load.contended(quiet) and machine_load.contended({}) is None
    assert machine_load.contended({**quiet, "other_busy_cores": None, "loadavg_after": 2.6})
    cell = machine_load.of_rows([busy, quiet, None])
    assert (cell["from_rows"], cell["contended_rows"], cell["loadavg_max"], cell["contended"]) == (2, 1, 3.9, True)
    record = machine_load.between(machine_load.sample(), machine_load.sample())
    assert record["cores"] >= 1 and isinstance(record["contended"], bool)
    rows = [dict(r, load=busy if r["method"] == "pld" and r["question_id"] == 1 else quiet) for r in VANILLA + PLD]
    rows += [dict(r, method="eagle2", replayed=True) for r in PLD]
    run_dir = write_run(tmp_path / "busy", rows)
    summary = metrics.summarize(metrics.load_frame(run_dir.glob("answers/*/*.jsonl"))).set_index("method")
    assert summary.loc["pld", "contended"] == "1/2" and summary.loc["vanilla", "contended"] == "0/2"
    assert summary.loc["eagle2", "tau_pooled"] == pytest.approx(3.0) and np.isnan(summary.loc["eagle2", "speedup"])
    assert summary.loc["eagle2", "lossless"] == "yes" and summary.loc["eagle2", "same_text"] == ""
    out = build([run_dir], tmp_path / "report")
    report = (out / "report.md").read_text()
    assert "pld T=0: 1 of 2 questions were timed while other processes shared the machine" in report
    pld_line = next(line for line in (out / "tables" / "summary.md").read_text().splitlines() if "| pld |" in line)
    assert "‡" in pld_line
    eagle = next(line for line in (out / "tables" / "paired.md").read_text().splitlines()
                 if "| eagle2 | pld |" in line or "| pld | eagle2 |" in line)
    assert "+0.00 [+0.00, +0.00]" in eagle and eagle.rstrip(" |").endswith("—")   # no speed for replayed rows


def test_published_claims_get_our_paired_verdict(tmp_path):
    eagle = [dict(r, method="eagle2") for r in PLD]
    hass = [dict(r, method="hass", choices=[dict(r["choices"][0], accept_lengths=r["choices"][0]["accept_lengths"]
                                                 [:-1] + [r["choices"][0]["accept_lengths"][-1] + 2])]) for r in PLD]
    run_dir = write_run(tmp_path / "claims", VANILLA + eagle + hass)
    out = build([run_dir], tmp_path / "report", paper=["hass"])
    claims = (out / "tables" / "claims.md").read_text()
    hass_line = next(line for line in claims.splitlines() if line.startswith("| HASS > EAGLE-2"))
    assert "| reproduced |" in hass_line and "arXiv 2408.15766" in hass_line
    assert "| Medusa < EAGLE-2 | τ | — |" in claims and "not measured here" in claims
    verdicts = (out / "paper_hass.md").read_text()
    assert "Our paired τ verdicts between the paper's methods" in verdicts
    with pytest.raises(UserError, match="relation"):
        bad = tmp_path / "anchors.toml"
        bad.write_text(paper.ANCHORS.read_text() + '\n[[claims]]\nclaim = "x"\nmethod = "a"\nreference = "b"\n'
                       'relation = "~"\nsource = "s"\n')
        paper.load_anchors(bad)


def test_a_speed_claim_is_judged_on_the_paired_speedup_of_real_decodes(tmp_path):
    """hass writes the same tokens as eagle2 in half the wall time: above it in tokens/s."""
    eagle = [dict(r, method="eagle2") for r in PLD]
    hass = [dict(r, method="hass", choices=[dict(r["choices"][0], wall_time=[r["choices"][0]["wall_time"][0] / 2])])
            for r in PLD]
    pairs = stats.paired(combined(load_runs([write_run(tmp_path / "speed", VANILLA + eagle + hass)])))
    claim = dict(claim="HASS faster", metric="speedup", method="hass", reference="eagle2", relation=">", source="s")
    frame = tables.claims(pairs, [claim, dict(claim, relation="<")], []).frame
    assert list(frame.Metric) == ["speedup", "speedup"]
    assert list(frame.Here) == ["reproduced", "contradicted"]
    row = pairs[(pairs.method == "hass") & (pairs.reference == "eagle2")].iloc[0]
    assert frame.iloc[0]["Δ (method − reference) [95% CI]"].startswith(f"{row.speedup_diff:+.2f}")
    replayed = pairs.assign(speedup_diff=float("nan"))   # replayed rows have no wall time: no speed verdict
    assert list(tables.claims(replayed, [claim], []).frame.Here) == ["not measured here"]
    with pytest.raises(UserError, match="metric"):
        bad = tmp_path / "anchors.toml"
        bad.write_text(paper.ANCHORS.read_text() + '\n[[claims]]\nclaim = "x"\nmethod = "a"\nreference = "b"\n'
                       'relation = ">"\nmetric = "accuracy"\nsource = "s"\n')
        paper.load_anchors(bad)


@pytest.mark.parametrize("suite", ["gsm8k", "gsm8k_eagle80"])
def test_paper_tables_show_replayed_cells_as_tau_only_and_pair_them_with_each_other(tmp_path, suite):
    """A full-suite replay (cells <method>-replay) fills the paper tables' τ, without speed, and the paired
    verdicts compare replayed with replayed. HASS's GSM8K column is EAGLE's 80 questions, or the full set."""
    accepts = {"eagle2": ([2, 2, 2, 2, 2], [1, 3, 3, 3]), "hass": ([3, 3, 3, 1], [4, 4, 2])}
    rows = [make_row(q, "vanilla", 0.0, [1] * 10, 1.0, "a", suite=suite) for q in (1, 2)]
    for method, (first, second) in accepts.items():
        rows += [dict(make_row(q, f"{method}-replay", 0.0, accept, None, "a", suite=suite), replayed=True)
                 for q, accept in ((1, first), (2, second))]
    out = build([write_run(tmp_path / "full", rows)], tmp_path / "report", paper=["hass"])
    md = (out / "paper_hass.md").read_text()
    hass = next(line for line in md.splitlines() if "| hass-replay | 0 | ours (full) |" in line)
    assert hass.rstrip(" |").endswith("replayed (τ only)")
    assert hass.split("|")[7].strip() == f"— / {20 / 7:.2f}"     # GSM8K: no speedup, τ = 20 tokens / 7 steps
    paired = next(line for line in md.splitlines() if "| hass-replay | eagle2-replay |" in line)
    assert f"{20 / 7 - 20 / 9:+.2f}" in paired


def test_answer_repetition_counts_windows_that_repeat_an_earlier_one(tmp_path, capsys, monkeypatch):
    """benchmarks/answer_repetition.py, the figure behind PLD's lead on a target that loops."""
    repetition = load_benchmark("answer_repetition")
    assert repetition.repeated_share([1, 2, 3, 1, 2, 3], n=3) == pytest.approx(0.25)   # 4 windows, 1 repeat
    assert repetition.repeated_share([1, 2, 3, 4], n=3) == 0.0
    assert repetition.repeated_share([1, 2], n=3) == 0.0   # shorter than one window
    answers = tmp_path / "vanilla-temperature-0.jsonl"
    rows = [{"task": "qa", "skipped": "", "token_ids": [[5, 5, 5, 5]]},
            {"task": "rag", "skipped": "", "token_ids": [[1, 2, 3, 4]]},
            {"task": "rag", "skipped": "too long", "token_ids": []}]
    answers.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr("sys.argv", ["answer_repetition.py", str(answers), "--n", "2"])
    repetition.main()
    table = capsys.readouterr().out
    assert "qa" in table and "0.667" in table and "all" in table and "0.333" in table
