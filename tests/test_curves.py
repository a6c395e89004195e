"""`harness curves`: learning-curve table, plot and goal check from checkpoint folders (no model needed)."""
import json
import math

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import UserError
from harness.report import curves


def _checkpoint(directory, method, depth1, stopped_by="steps", patience=2, holdout_from=0, init=None, threads=2):
    directory.mkdir(parents=True)
    evals = [{"epoch": 1, "step": 10 * (i + 1), "top1_depth1": v, "top1_depth2": v / 2} for i, v in enumerate(depth1)]
    config = {"method": method, "training": {
        "config": {"holdout": 0.05, "holdout_from": holdout_from, "patience": patience},
        "data_samples": 100, "steps": 10 * len(depth1), "seconds": 12.5, "stopped_by": stopped_by, "evals": evals,
        "init": None if init is None else str(init), "env": {"torch_threads": threads}}}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_summary_says_whether_each_run_rose_plateaued_and_reached_the_goal(tmp_path):
    rising = _checkpoint(tmp_path / "rising", "eagle2", [0.30, 0.40, 0.45])
    flat = _checkpoint(tmp_path / "flat", "hass", [0.10, 0.60, 0.50, 0.60], stopped_by="plateau", holdout_from=64)
    table = curves.summary([curves.load_curve(rising), curves.load_curve(flat)], goal=0.55)
    first, second = table.iloc[0], table.iloc[1]
    assert first["depth1"] == pytest.approx(0.45) and first["last_gain"] == pytest.approx(0.05)
    assert not first["plateau"] and not first["goal_reached"] and first["stopped_by"] == "steps"
    assert second["plateau"] and second["goal_reached"] and second["held_out"].endswith("from #64")
    assert second["depth2"] == pytest.approx(0.30)


def test_cli_writes_the_table_and_the_plot(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "ckpt", "coral", [0.2, 0.25])
    out = tmp_path / "report"
    assert main(["curves", str(checkpoint), "--goal", "0.55", "--out", str(out)]) == 0
    text = (out / "curves.md").read_text()
    assert "| coral |" in text and "0.250" in text and "| no |" in text
    assert "core_hours" in text and "| 0.01 |" in text                  # 12.5 s on two threads
    assert (out / "curves.png").stat().st_size > 0 and (out / "curves.svg").is_file()


def test_a_folder_without_a_training_record_is_refused_clearly(tmp_path, capsys):
    with pytest.raises(UserError, match="no config.json"):
        curves.load_curve(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"method": "eagle2", "training": {"evals": []}}))
    assert main(["curves", str(tmp_path)]) == 2
    assert "no held-out evaluations" in capsys.readouterr().err


def test_lineage_joins_an_init_chain_on_one_step_axis_and_keeps_only_evaluations_on_the_same_held_out_split(
        tmp_path, capsys):
    first = _checkpoint(tmp_path / "first", "hass", [0.20], holdout_from=0)           # another held-out split
    second = _checkpoint(tmp_path / "second", "hass", [0.40, 0.45], holdout_from=64, init=first)
    third = _checkpoint(tmp_path / "third", "hass", [0.44, 0.45, 0.44], holdout_from=64, init=second)
    curve = curves.load_lineage(third)
    assert curve.evals["step"].tolist() == [20, 30, 40, 50, 60]   # first's 10 steps counted, its eval not
    assert curve.evals["top1_depth1"].tolist() == [0.40, 0.45, 0.44, 0.45, 0.44]
    assert curve.steps == 60 and curve.seconds == pytest.approx(37.5) and curve.lineage.startswith("3 runs")
    assert curve.core_hours == pytest.approx(3 * 12.5 * 2 / 3600)           # each run: 12.5 s on two threads
    row = curves.summary([curve], goal=0.55).iloc[0]
    assert row["plateau"] and row["last_gain"] == pytest.approx(-0.01)   # no new best in the last 2 evaluations
    assert row["lineage"] == f"3 runs from {first}"
    assert row["run_gain"] == pytest.approx(0.44 - 0.45)   # over the last run: from second's end (0.45) to 0.44
    assert not curves.summary([curves.load_curve(third)], goal=None).iloc[0]["plateau"]   # third alone: rising
    assert curves.load_lineage(first).evals["step"].tolist() == [10]     # no chain: the run itself
    assert pd.isna(curves.summary([curves.load_lineage(second)], goal=None).iloc[0]["run_gain"])  # first: other split
    config = json.loads((first / "config.json").read_text())
    config["training"]["init"] = str(first)                          # trained on in place: earlier runs lost
    (first / "config.json").write_text(json.dumps(config))
    assert "trained on in place" in curves.load_lineage(third).lineage and curves.load_lineage(third).steps == 60
    del config["training"]["env"]                                    # threads not recorded: core-hours unknown
    (first / "config.json").write_text(json.dumps(config))
    assert math.isnan(curves.load_lineage(third).core_hours) and curves.load_curve(third).core_hours > 0
    out = tmp_path / "report"
    assert main(["curves", str(third), "--lineage", "--out", str(out)]) == 0
    assert "Lineage:" in (out / "curves.md").read_text()
