"""``harness heldout``: per-sample held-out top-1 of checkpoints, its intervals and paired gains."""
import dataclasses
import json

import pandas as pd
import pytest

from harness import cli
from harness import checkpoint as ckpt
from harness.errors import UserError
from harness.learned import learned
from harness.target import Target
from harness.train import heldout, trainer
from methods.eagle2 import Eagle2
from tests.test_hass_fspad import feature_data
from tests.test_eagle3 import layer_data
from tests.test_learned import LEARNED, tiny_loss
from tests.tiny import load_benchmark, save_tiny_target, tiny_target

SETTINGS = trainer.TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.25, eval_depths=2)


@pytest.fixture(scope="module")
def two_passes(tmp_path_factory):
    """A tiny target, its feature data, and an eagle2 draft trained twice (the second run from the first)."""
    root = tmp_path_factory.mktemp("heldout")
    target_dir = save_tiny_target(root / "target")
    target = Target.load(target_dir, dtype="float32")
    data = feature_data(target, root / "data", samples=16)
    first = trainer.train(Eagle2, target, data, root / "first", SETTINGS)
    second = trainer.train(Eagle2, target, data, root / "second", SETTINGS, init=first)
    return target_dir, target, data, first, second


def test_sample_by_sample_totals_equal_the_trainers_batched_evaluation(two_passes):
    _, target, data, first, _ = two_passes
    config = json.loads((first / "config.json").read_text())
    data_used, held_out = heldout.held_out_samples([config], [first], None)
    assert held_out == data.split(SETTINGS.holdout, SETTINGS.seed)[1] and len(held_out) == 4
    per_sample = heldout.evaluate(first, config, target, data_used, held_out, depths=2)
    assert sorted(per_sample["sample"].unique()) == sorted(held_out)

    net, _ = Eagle2.load(target, str(first))
    _, objective = Eagle2.training_setup(target, data_used, **config["loss"])
    batched = trainer._evaluate(objective, net, data_used, held_out, dataclasses.replace(SETTINGS, eval_depths=2),
                                target.device)
    for depth, part in per_sample.groupby("depth"):
        assert part.hits.sum() / part.positions.sum() == pytest.approx(batched[f"top1_depth{depth}"])


def test_a_gain_is_paired_over_samples_and_judged_by_its_interval():
    before = pd.DataFrame({"sample": range(30), "depth": 1, "hits": [5 + i % 3 for i in range(30)], "positions": 20})
    better = before.assign(hits=before.hits + 2)
    same = heldout.compare([("a", before), ("b", before)])
    assert same.loc[1, "gain"] == 0 and same.loc[1, "verdict"] == "not distinguishable"
    assert pd.isna(same.loc[0].get("gain"))   # the first checkpoint has nothing before it
    up = heldout.compare([("a", before), ("b", better)]).loc[1]
    assert up["gain"] == pytest.approx(2 / 20) and up["verdict"] == "above" and up["gain_lo"] > 0
    assert heldout.compare([("b", better), ("a", before)]).loc[1, "verdict"] == "below"
    assert up["lo"] <= up["top1"] <= up["hi"]
    against_first = heldout.compare([("a", before), ("b", better), ("c", better)], versus="first")
    assert list(against_first.gain[1:]) == pytest.approx([0.1, 0.1])   # c against a, not against b
    assert heldout.compare([("a", before), ("b", better), ("c", better)]).loc[2, "gain"] == 0


def test_checkpoints_measured_on_other_held_out_samples_are_refused(two_passes):
    _, _, _, first, second = two_passes
    configs = [json.loads((d / "config.json").read_text()) for d in (first, second)]
    configs[1]["training"]["config"]["holdout_from"] = 3
    with pytest.raises(UserError, match="different held-out splits"):
        heldout.held_out_samples(configs, [first, second], None)


def test_the_command_writes_the_table_and_the_per_sample_rows(two_passes, tmp_path, capsys):
    target_dir, _, _, first, second = two_passes
    assert cli.main(["heldout", str(first), str(second), "--target", target_dir, "--depths", "2",
                     "--out", str(tmp_path / "out")]) == 0
    rows = pd.read_csv(tmp_path / "out" / "heldout.csv")
    assert set(rows.checkpoint) == {str(first), str(second)} and set(rows.depth) == {1, 2} and len(rows) == 2 * 2 * 4
    text = (tmp_path / "out" / "heldout.md").read_text()
    assert "minus the checkpoint listed before it" in text and str(second) in capsys.readouterr().out
    assert cli.main(["heldout", str(tmp_path / "nothing")]) == 2


def test_a_split_drawn_from_the_first_samples_reads_only_those(two_passes):
    _, _, data, first, _ = two_passes
    config = json.loads((first / "config.json").read_text())
    config["training"]["config"].update(holdout_of=8, holdout_from=2)
    read, held_out = heldout.held_out_samples([config], [first], None)
    assert len(read.samples) == 8 and held_out == data.split(SETTINGS.holdout, SETTINGS.seed, 2, 8)[1]


def test_the_train_split_draws_as_many_trained_samples_and_none_held_out(two_passes, tmp_path):
    target_dir, _, data, first, _ = two_passes
    config = json.loads((first / "config.json").read_text())
    _, held_out = heldout.held_out_samples([config], [first], None)
    _, trained = heldout.held_out_samples([config], [first], None, split="train")
    assert len(trained) == len(held_out) and not set(trained) & set(held_out)
    assert set(trained) <= set(data.split(SETTINGS.holdout, SETTINGS.seed)[0])
    assert cli.main(["heldout", str(first), "--split", "train", "--target", target_dir, "--depths", "1",
                     "--out", str(tmp_path)]) == 0
    assert "samples they trained on" in (tmp_path / "heldout.md").read_text()
    assert set(pd.read_csv(tmp_path / "heldout.csv")["sample"]) == set(trained)
    config["training"]["config"].update(holdout_of=12, holdout_from=4)
    _, trained = heldout.held_out_samples([config], [first], None, split="train")
    assert all(4 <= i < 12 for i in trained)   # the held-out samples' index range, so the same mix of sources


def test_the_generalization_gap_and_its_paired_change_pass_by_pass():
    """benchmarks/generalization_gap.py: a draft whose trained-on top-1 rises while its held-out top-1 stays
    shows a widening gap, and the change is judged on the same resampled samples for both passes."""
    gap = load_benchmark("generalization_gap")
    def per_sample(hits_a, hits_b):
        return pd.concat([pd.DataFrame({"checkpoint": name, "sample": range(40), "depth": 1,
                                        "hits": [h + i % 3 for i in range(40)], "positions": 20})
                          for name, h in (("a", hits_a), ("b", hits_b))])
    results = gap.gaps(per_sample(14, 16), per_sample(10, 10))
    first, second = results.itertuples()
    assert first.gap == pytest.approx(4 / 20) and pd.isna(first.change)
    assert second.gap == pytest.approx(6 / 20) and second.change == pytest.approx(2 / 20)
    assert 0 < second.change_ci[0] <= second.change <= second.change_ci[1]   # paired: the sample noise cancels
    assert second.gap_ci[0] < second.gap < second.gap_ci[1]
    assert "gap minus the row before" in gap.markdown_table(gap.table(results))


@pytest.mark.parametrize("method", LEARNED)
def test_every_learned_drafter_is_measured_per_sample_at_the_depths_asked(method, tmp_path):
    """Through each method's own objective, whatever other figures it reports (CORAL's router recall)."""
    target = tiny_target("llama")
    cls = learned(method, "train")
    small_vocab = "draft_vocab" in cls.loss_config()   # EAGLE-3's draft vocabulary, within the tiny 96 tokens
    data = (layer_data if small_vocab else feature_data)(target, tmp_path / "data")
    loss = cls.loss_config(**tiny_loss(cls), **({"draft_vocab": 40} if small_vocab else {}))
    net = cls.training_setup(target, data, **loss)[0]
    config = {"method": method, "target": target.fingerprint(), "architecture": cls.architecture(net), "loss": loss}
    ckpt.save(tmp_path / "draft", net.state_dict(), config)
    frame = heldout.evaluate(tmp_path / "draft", config, target, data, [0, 1], depths=2)
    assert sorted(set(zip(frame["sample"], frame.depth))) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert (frame.positions > 0).all() and (frame.hits <= frame.positions).all()
