"""`harness train --passes`: passes chained from one another, stopped at the first one that no longer gains on
the held-out samples, resumable."""
import dataclasses

import pandas as pd
import pytest

from harness.train import heldout, passes, trainer
from methods.eagle2 import Eagle2
from tests.test_hass_fspad import feature_data
from tests.tiny import tiny_target

SETTINGS = trainer.TrainConfig(epochs=1, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.25, eval_depths=1)


@pytest.fixture()
def setup(tmp_path):
    target = tiny_target("llama")
    return target, feature_data(target, tmp_path / "data", samples=24)


def test_a_pass_that_cannot_change_the_weights_is_a_plateau_and_a_rerun_trains_nothing(setup, tmp_path, monkeypatch):
    target, data = setup
    start = trainer.train(Eagle2, target, data, tmp_path / "start", SETTINGS)
    frozen = dataclasses.replace(SETTINGS, lr=0.0)   # the pass ends where it began: a gain of exactly zero
    results = passes.run(Eagle2, target, data, tmp_path / "passes", frozen, None, start, max_passes=4)
    first = results[(results.checkpoint == str(tmp_path / "passes" / "pass-01")) & (results.depth == 1)].iloc[0]
    assert first.gain == 0 and first.verdict == "not distinguishable"
    assert not (tmp_path / "passes" / "pass-02").exists()
    assert "pass-01" in (tmp_path / "passes" / "passes.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished pass was trained again")
    monkeypatch.setattr(trainer, "train", no_training)
    monkeypatch.setattr(heldout, "evaluate", no_training)   # the held-out figures are kept too
    again = passes.run(Eagle2, target, data, tmp_path / "passes", frozen, None, start, max_passes=4)
    pd.testing.assert_frame_equal(again, results)


def test_passes_go_on_while_the_held_out_gain_is_above_zero(setup, tmp_path, monkeypatch):
    """The held-out hits are set by hand here (pass 1, 2: more hits on every sample; pass 3: the same as
    pass 2), so the stopping rule is what is tested; the passes themselves are real training runs."""
    target, data = setup
    hits_of = {"pass-01": 1, "pass-02": 3, "pass-03": 3}

    def evaluate(folder, config, target, data, held_out, depths):
        return pd.DataFrame([{"sample": s, "depth": 1, "hits": hits_of[folder.name] + s % 2, "positions": 8}
                             for s in held_out])
    monkeypatch.setattr(heldout, "evaluate", evaluate)
    results = passes.run(Eagle2, target, data, tmp_path / "passes", SETTINGS, None, None, max_passes=5)
    assert [p.name for p in sorted((tmp_path / "passes").glob("pass-*"))] == ["pass-01", "pass-02", "pass-03"]
    assert results.verdict.tolist()[1:] == ["above", "not distinguishable"]


def test_with_a_min_gain_a_pass_that_gains_less_is_a_plateau_though_its_gain_is_above_zero(setup, tmp_path,
                                                                                           monkeypatch):
    target, data = setup
    hits_of = {"pass-01": 10, "pass-02": 14, "pass-03": 15, "pass-04": 20}   # gains 0.04, then 0.01 on every sample

    def evaluate(folder, config, target, data, held_out, depths):
        return pd.DataFrame([{"sample": s, "depth": 1, "hits": hits_of[folder.name], "positions": 100}
                             for s in held_out])
    monkeypatch.setattr(heldout, "evaluate", evaluate)
    results = passes.run(Eagle2, target, data, tmp_path / "passes", SETTINGS, None, None, max_passes=4,
                         min_gain=0.02)
    assert [p.name for p in sorted((tmp_path / "passes").glob("pass-*"))] == ["pass-01", "pass-02", "pass-03"]
    assert results.verdict.tolist()[1:] == ["above", "above"]   # pass 3 still gains, by less than asked
    assert "above +0.020" in (tmp_path / "passes" / "passes.md").read_text()


def test_a_pass_cut_by_its_time_budget_stops_the_passes_until_a_rerun_resumes_it(setup, tmp_path):
    target, data = setup
    budget = dataclasses.replace(SETTINGS, time_budget_s=1e-9)
    passes.run(Eagle2, target, data, tmp_path / "passes", budget, None, None, max_passes=3)
    assert [p.name for p in (tmp_path / "passes").glob("pass-*")] == ["pass-01"]
    passes.run(Eagle2, target, data, tmp_path / "passes", dataclasses.replace(SETTINGS, lr=0.0), None, None,
               max_passes=2)
    assert sorted(p.name for p in (tmp_path / "passes").glob("pass-*")) == ["pass-01", "pass-02"]


def test_the_cli_runs_passes_and_refuses_a_count_below_one_or_a_min_gain_without_passes(tmp_path, capsys):
    from harness.cli import main
    from harness.target import Target
    from tests.tiny import save_tiny_target

    target_dir = save_tiny_target(tmp_path / "target")
    data = feature_data(Target.load(target_dir), tmp_path / "data", samples=24)
    command = ["train", "--method", "eagle2", "--data", str(data.directory), "--out", str(tmp_path / "passes"),
               "--target", str(target_dir), "--preset", "cpu", "--set", "epochs=1", "--set", "batch_size=4",
               "--set", "holdout=0.25", "--set", "warmup_steps=1", "--set", "lr=0"]
    assert main(command + ["--passes", "2"]) == 0
    assert "pass-02" in (tmp_path / "passes" / "passes.md").read_text()   # pass 1 had nothing to be paired with
    assert main(command + ["--passes", "0"]) == 2 and "--passes takes a count" in capsys.readouterr().err
    assert main(command + ["--min-gain", "0.01"]) == 2 and "needs --passes" in capsys.readouterr().err
