"""Reports: estimators and tables on hand-built rows with known answers, a report from a tiny-target run
with every table and figure present, paper tables against anchors.toml, and a headless screenshot."""
import argparse
import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest

from harness import metrics, runner
from harness.errors import UserError
from harness.records import ESTIMATORS, RowWriter, answer_file
from harness.report import add_arguments, build, paper, run, stats
from harness.report.load import combined, load_runs
from harness.suite import SUITES, Question, Suite
from tests.tiny import save_tiny_target

CHROMIUM = Path("/usr/bin/chromium")
TABLES = ["summary", "speedup_by_task", "tau_by_task", "latency", "acceptance_by_depth", "quality", "environment"]


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
    out = build([hand_run], tmp_path / "report", paper="specbench")
    md = (out / "paper_specbench.md").read_text()
    assert "| PLD | 0 | paper | 1.64 / — |" in md                           # §5.4a, conversation column
    ours = next(line for line in md.splitlines() if "| pld | 0 | ours (hand) |" in line)
    assert ours.split("|")[4].strip() == f"{20 / 10:.2f} / {2.5:.2f}"    # Conv: mt_bench task, speedup / tau
    assert ours.split("|")[10].strip() == f"{20 / 7.5:.2f} / {3.0:.2f}"  # Overall: the whole suite
    assert "\\begin{tabular}" in (out / "paper_specbench.tex").read_text()
    assert "RTX 3090" in (out / "paper_specbench.html").read_text()
    coral = (build([hand_run], tmp_path / "coral", paper="coral") / "paper_coral.md").read_text()
    paper_rows = [line for line in coral.splitlines() if "| paper |" in line]
    assert len(paper_rows) == 18 and all("pending-primary" in line for line in paper_rows)
    assert not any(ch.isdigit() for line in paper_rows for ch in line.split("| paper |")[1])
    with pytest.raises(UserError, match="unknown paper"):
        build([hand_run], tmp_path / "x", paper="nosuch")


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
    return build([run_dir], root / "report", paper="specbench")


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
