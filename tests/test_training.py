"""The training pipeline end to end on a tiny target: datagen shards, trainer with resume, checkpoint use."""
import csv
import dataclasses
import hashlib
import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from harness.decode import generate
from harness.errors import UserError
from harness.sampling import SamplingParams
from harness.suite import SUITES, Question, Suite
from harness.target import Target
from harness.train import datagen, trainer
from harness.train.data import FeatureData
from harness.train.prompts import training_prompts
from harness.verify import Verifier
from methods.eagle2 import Eagle2
from tests.tiny import hf_greedy, save_tiny_target


def test_training_prompts_drop_evaluation_overlap(training_data):
    prompts, stats = training_prompts(["codegen", "gsm8k"], training_data)
    # docs/reference.md §3.7: 148 codegen items share an 8-gram with an evaluation prompt. The same prompts are dropped
    # as when the evaluation files and fields were listed by hand (counts and digest measured then).
    assert stats["dropped_overlap"] == 244 and stats["per_source"] == {"codegen": 4387, "gsm8k": 7377}
    assert hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16] == "7d618345acec72ef"
    assert {"specbench", "mtbench", "gsm8k", "humaneval"} <= set(stats["decontaminated"])
    assert "followeval" not in stats["decontaminated"]   # the user's own data, absent here: nothing to see


def test_a_newly_registered_suite_is_decontaminated_against(training_data, monkeypatch):
    before, _ = training_prompts(["roleplay"], training_data)
    leaked = next(p for p in before if len(p.split()) >= 8)

    class Leaky(Suite):
        """One question that is a training prompt (tests only)."""

        name = "leaky"

        def questions(self):
            return [Question(id="0", category="c", turns=(leaked,))]

    monkeypatch.setitem(SUITES._classes, "leaky", Leaky)
    monkeypatch.setitem(SUITES._aliases, "leaky", "leaky")
    after, stats = training_prompts(["roleplay"], training_data)
    assert leaked not in after and len(after) < len(before) and "leaky" in stats["decontaminated"]


def test_datagen_train_resume_and_load(training_data, tmp_path):
    target_dir = save_tiny_target(tmp_path / "target")
    config = datagen.DatagenConfig(target=target_dir, out=tmp_path / "data", sources=("gsm8k",), max_samples=12,
                                   max_new_tokens=12, batch_size=4, shard_size=6, data_dir=training_data)
    datagen.run(config)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [6, 6]
    data = FeatureData(tmp_path / "data")
    ids, loss_mask, hidden, *_ = data.samples[0]
    assert hidden.shape == (ids.shape[0], 32) and loss_mask.any() and not loss_mask.all()

    target = Target.load(target_dir)
    settings = trainer.TrainConfig(epochs=1, batch_size=4, lr=3e-3, warmup_steps=1, holdout=0.2, eval_depths=3)
    out = tmp_path / "draft"
    trainer.train(Eagle2, target, data, out, settings)
    trainer.train(Eagle2, target, data, out, dataclasses.replace(settings, epochs=2))   # resumes after epoch 1
    evals = json.loads((out / "config.json").read_text())["training"]["evals"]
    assert [e["epoch"] for e in evals] == [1, 2] and "top1_depth3" in evals[-1]
    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lr") and len(rows) == 1 + 2 * 3   # 9 train samples / batch 4 = 3 steps

    drafter = Eagle2(target, checkpoint=str(out), total_tokens=10, depth=2, top_k=3)
    prompt = torch.tensor([0, 5, 6, 7])
    gen = generate(target, drafter, Verifier(), prompt, max_new_tokens=20, stop_ids=frozenset({1}),
                   sampling=SamplingParams(), rng=torch.Generator())
    assert gen.tokens == hf_greedy(target.model, prompt, 20)


def test_datagen_rebuilds_a_lost_folder_from_the_kept_answers_without_generating(training_data, tmp_path,
                                                                                monkeypatch):
    """The answers folder alone (what gets committed) gives the same shards back with the feature forward only;
    answers made with other decoding settings are refused, and older folders get their answers on resume."""
    from safetensors.torch import load_file
    target_dir = save_tiny_target(tmp_path / "target")
    kept = tmp_path / "kept"
    config = datagen.DatagenConfig(target=target_dir, out=tmp_path / "first", sources=("gsm8k",), max_samples=8,
                                   max_new_tokens=10, batch_size=4, shard_size=4, data_dir=training_data,
                                   answers=kept)
    datagen.run(config)
    assert sorted(p.name for p in kept.iterdir()) == [datagen.shard_name(0), datagen.shard_name(1)]

    def no_generation(*args, **kwargs):
        raise AssertionError("generated although the answers were kept")

    monkeypatch.setattr(datagen, "_generate", no_generation)
    datagen.run(dataclasses.replace(config, out=tmp_path / "again"))
    for index in (0, 1):
        first = load_file(str(tmp_path / "first" / datagen.shard_name(index)))
        again = load_file(str(tmp_path / "again" / datagen.shard_name(index)))
        assert first.keys() == again.keys()
        for key in first:
            assert torch.equal(first[key], again[key]), key
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert all(shard["answers_reused"] for shard in manifest["shards"])

    with pytest.raises(UserError, match="max_new_tokens: 10 there, 11 here"):
        datagen.run(dataclasses.replace(config, out=tmp_path / "other", max_new_tokens=11))

    # A folder made without the answers on their own (an older run) gets them when it is resumed.
    (kept / datagen.shard_name(1)).unlink()
    monkeypatch.undo()
    datagen.run(dataclasses.replace(config, out=tmp_path / "first"))
    with safe_open(str(kept / datagen.shard_name(1)), "pt") as handle:
        meta = json.loads(handle.metadata()["answer_meta"])
    shard = load_file(str(tmp_path / "first" / datagen.shard_name(1)))
    assert datagen.load_answers(kept / datagen.shard_name(1), meta) == datagen.answers_of(shard)


def test_datagen_grows_a_folder_with_more_samples_and_refuses_a_count_that_changes_made_shards(training_data,
                                                                                               tmp_path):
    """A shard's prompts depend on its index alone, so raising --max-samples adds shards to a folder and leaves
    the made ones as they are; a count that would refill a partial last shard or drop made ones is refused."""
    from safetensors.torch import load_file
    target_dir = save_tiny_target(tmp_path / "target")
    small = datagen.DatagenConfig(target=target_dir, out=tmp_path / "grown", sources=("gsm8k",), max_samples=8,
                                  max_new_tokens=6, batch_size=4, shard_size=4, data_dir=training_data)
    datagen.run(small)
    first = load_file(str(tmp_path / "grown" / datagen.shard_name(0)))
    datagen.run(dataclasses.replace(small, max_samples=12))
    datagen.run(dataclasses.replace(small, out=tmp_path / "at_once", max_samples=12))
    for index in range(3):
        grown = load_file(str(tmp_path / "grown" / datagen.shard_name(index)))
        at_once = load_file(str(tmp_path / "at_once" / datagen.shard_name(index)))
        assert all(torch.equal(grown[key], at_once[key]) for key in at_once), index
    assert all(torch.equal(first[key], grown_0) for key, grown_0 in
               load_file(str(tmp_path / "grown" / datagen.shard_name(0))).items())
    manifest = json.loads((tmp_path / "grown" / "manifest.json").read_text())
    assert manifest["settings"]["max_samples"] == 12 and [s["samples"] for s in manifest["shards"]] == [4, 4, 4]

    with pytest.raises(UserError, match="keep --max-samples 12"):
        datagen.run(dataclasses.replace(small, max_samples=8))      # would drop shard 2
    datagen.run(dataclasses.replace(small, out=tmp_path / "partial", max_samples=6))
    with pytest.raises(UserError, match="shard_00001.safetensors, which --max-samples 8 would make 4"):
        datagen.run(dataclasses.replace(small, out=tmp_path / "partial", max_samples=8))


def test_datagen_feature_layers_store_the_chosen_layer_inputs(shared_data, tmp_path):
    """``hidden_layers`` holds transformers' hidden_states[i] (the input of layer i) for each chosen i."""
    from safetensors.torch import load_file
    target_dir = save_tiny_target(tmp_path / "target")
    config = datagen.DatagenConfig(target=target_dir, out=tmp_path / "data", sources=("gsm8k",), max_samples=2,
                                   max_new_tokens=6, batch_size=2, shard_size=2, data_dir=shared_data,
                                   feature_layers=("0", "1"))
    datagen.run(config)
    shard = load_file(str(tmp_path / "data" / datagen.shard_name(0)))
    target = Target.load(target_dir)
    end = int(shard["offsets"][1])
    with torch.no_grad():
        states = target.model.get_decoder()(input_ids=shard["input_ids"][None, :end].long(),
                                            output_hidden_states=True).hidden_states
    expected = torch.cat([states[0][0], states[1][0]], dim=-1).to(torch.bfloat16)
    assert shard["hidden_layers"].shape == (int(shard["offsets"][-1]), 64)
    torch.testing.assert_close(shard["hidden_layers"][:end].float(), expected.float(), atol=2e-2, rtol=2e-2)
    assert datagen.eagle3_layers(30) == (2, 15, 27)
    assert datagen.resolve_layers(("eagle3",), 30) == (2, 15, 27)


def test_datagen_topk_logprobs_are_the_target_heads_and_reach_the_batches(training_data, tmp_path):
    target_dir = save_tiny_target(tmp_path / "target")
    config = datagen.DatagenConfig(target=target_dir, out=tmp_path / "data", sources=("gsm8k",), max_samples=3,
                                   max_new_tokens=6, batch_size=3, shard_size=3, data_dir=training_data,
                                   topk_logprobs=5)
    datagen.run(config)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["settings"]["topk_logprobs"] == 5
    data = FeatureData(tmp_path / "data")
    target = Target.load(target_dir)
    ids = data.samples[0].ids
    with torch.no_grad():
        hidden = target.model.get_decoder()(input_ids=ids[None]).last_hidden_state[0]
        expected = torch.log_softmax(target.lm_head(hidden), -1).topk(5)
    assert torch.equal(data.samples[0].topk_ids.long(), expected.indices)
    torch.testing.assert_close(data.samples[0].topk_logp.float(), expected.values, atol=2e-3, rtol=1e-3)   # fp16
    batch = data.collate([0, 1, 2], "cpu")
    assert batch.topk_ids.shape == (3, batch.ids.shape[1], 5) and batch.topk_logp.dtype == torch.float32


def test_max_steps_stops_mid_epoch_with_the_schedule_decayed_to_zero(tmp_path):
    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")        # 11 training samples: 3 steps per epoch at batch 4
    settings = trainer.TrainConfig(epochs=5, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=1,
                                   max_steps=4)
    out = trainer.train(Eagle2, target, data, tmp_path / "draft", settings)
    rows = (out / "train_log.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and float(rows[-1].split(",")[2]) == 0.0
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["steps"] == 4 and training["stopped_early"] and training["epochs_done"] == 2


@pytest.mark.parametrize("method", ["eagle2", "hass", "coral", "fspad", "medusa", "eagle3"])
def test_bf16_precision_trains_on_a_cpu_with_fp32_weights_and_other_numbers(tmp_path, method):
    """precision=bf16 autocasts the loss on a CPU: the run completes with finite losses, the weights and the
    optimizer stay fp32, and the result differs from the fp32 run's (so autocast did act); unknown values are
    refused."""
    from harness.drafter import METHODS
    from safetensors.torch import load_file

    from tests.test_eagle3 import layer_data
    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    data = (layer_data if method == "eagle3" else feature_data)(target, tmp_path / "data")
    settings = trainer.TrainConfig(epochs=1, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=1)
    loss = {"coral": {"num_groups": 4, "always_on": 8}, "eagle3": {"draft_vocab": 40}}.get(method, {})  # fit 96 tokens
    weights = {}
    for precision in ("fp32", "bf16"):
        out = trainer.train(METHODS.get(method), target, data, tmp_path / precision,
                            dataclasses.replace(settings, precision=precision), loss)
        with open(out / "train_log.csv") as log:
            losses = [float(row["loss"]) for row in csv.DictReader(log)]
        assert losses and all(math.isfinite(value) for value in losses)
        state = torch.load(out / "trainer_state.pt", weights_only=False)
        assert all(v.dtype == torch.float32 for v in state["net"].values() if v.is_floating_point())
        weights[precision] = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(weights["fp32"][k], weights["bf16"][k]) for k in weights["fp32"])
    with pytest.raises(UserError, match="precision='fp16'"):
        trainer.TrainConfig(precision="fp16")


def test_the_checkpoint_records_the_environment_the_run_started_in(tmp_path, monkeypatch):
    """A commit made while a long run trains is not the code that ran: the env is read once, at the start."""
    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    calls = iter(range(100))
    monkeypatch.setattr(trainer.env, "capture", lambda: {"harness_commit": f"commit {next(calls)}"})
    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")
    settings = trainer.TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=1)
    out = trainer.train(Eagle2, target, data, tmp_path / "draft", settings)
    for where in (out, out / "epoch_1"):
        assert json.loads((where / "config.json").read_text())["training"]["env"] == {"harness_commit": "commit 0"}


def test_a_run_stopped_mid_epoch_resumes_at_that_step_and_ends_as_an_uninterrupted_one(tmp_path):
    """eval_every checkpoints inside an epoch; a budget stop after the first step and a rerun give the same
    weights as one run (batch order and random state restored: EAGLE's feature noise and ce_sample draw)."""
    from safetensors.torch import load_file

    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")        # 11 training samples: 3 steps per epoch at batch 4
    settings = trainer.TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=1,
                                   eval_every=2)
    loss = {"ce_sample": 5}
    whole = trainer.train(Eagle2, target, data, tmp_path / "whole", settings, loss)
    evals = json.loads((whole / "config.json").read_text())["training"]["evals"]
    assert [(e["epoch"], e["step"]) for e in evals] == [(1, 2), (1, 3), (2, 4), (2, 6)]
    assert (whole / "latest" / "model.safetensors").is_file()

    parts = tmp_path / "parts"
    trainer.train(Eagle2, target, data, parts, dataclasses.replace(settings, time_budget_s=1e-9), loss)
    first = json.loads((parts / "config.json").read_text())["training"]
    assert first["steps"] == 1 and first["stopped_by"] == "budget" and first["epochs_done"] == 0
    # A run killed before its next checkpoint had logged steps its saved state never reached.
    train_log, eval_log = parts / "train_log.csv", parts / "eval_log.csv"
    lines = train_log.read_text().splitlines()
    train_log.write_text("\n".join(lines + [lines[-1].replace("1,", "2,", 1)]) + "\n")
    eval_log.write_text(eval_log.read_text() + eval_log.read_text().splitlines()[-1].replace("1,1,", "1,2,", 1) + "\n")
    trainer.train(Eagle2, target, data, parts, settings, loss)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(train_log)["step"].tolist() == pd.read_csv(whole / "train_log.csv")["step"].tolist()
    assert pd.read_csv(eval_log)["step"].tolist() == [1, 2, 3, 4, 6]   # the budget stop's evaluation, then the rest


def test_a_fresh_start_into_a_folder_with_logs_of_a_run_killed_before_its_first_save_does_not_append(tmp_path):
    """No saved state means the run starts at step 1, so the old rows are dropped rather than logged twice."""
    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")
    settings = trainer.TrainConfig(epochs=1, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=1)
    out = trainer.train(Eagle2, target, data, tmp_path / "draft", settings)
    (out / "trainer_state.pt").unlink()                     # as if killed before the first checkpoint
    trainer.train(Eagle2, target, data, out, settings)
    assert pd.read_csv(out / "train_log.csv")["step"].tolist() == [1, 2, 3]
    assert pd.read_csv(out / "eval_log.csv")["step"].tolist() == [3]


class _Killed(Exception):
    """Stands for the process being killed (a session's end) in the middle of a save."""


def test_a_run_killed_while_saving_its_state_resumes_from_the_one_before(tmp_path, monkeypatch):
    """The resume state is replaced only once the new one is whole, so a run killed mid-save resumes from its
    previous checkpoint and still ends as an uninterrupted run; a state file that cannot be read is refused
    with a message saying what it holds."""
    import io

    from safetensors.torch import load_file

    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")        # 11 training samples: 3 steps per epoch at batch 4
    settings = trainer.TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=1,
                                   eval_every=2)
    whole = trainer.train(Eagle2, target, data, tmp_path / "whole", settings)

    real_save, saves = torch.save, []

    def killed_during_the_second_save(obj, path):
        saves.append(path)
        if len(saves) < 2:
            return real_save(obj, path)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        Path(path).write_bytes(buffer.getvalue()[:buffer.tell() // 2])
        raise _Killed

    monkeypatch.setattr(trainer.torch, "save", killed_during_the_second_save)
    parts = tmp_path / "parts"
    with pytest.raises(_Killed):
        trainer.train(Eagle2, target, data, parts, settings)
    monkeypatch.setattr(trainer.torch, "save", real_save)
    assert torch.load(parts / "trainer_state.pt", weights_only=False)["state"]["step"] == 2
    trainer.train(Eagle2, target, data, parts, settings)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    (parts / "trainer_state.pt").write_bytes(b"not a state")
    with pytest.raises(UserError, match="trainer_state.pt cannot be read .* move it away"):
        trainer.train(Eagle2, target, data, parts, settings)


def test_training_stops_at_a_plateau_of_the_held_out_top1(tmp_path):
    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")
    settings = trainer.TrainConfig(epochs=5, batch_size=4, lr=0.0, warmup_steps=1, holdout=0.1, eval_depths=1,
                                   eval_every=1, patience=2)   # lr 0: the same top-1 at every evaluation
    out = trainer.train(Eagle2, target, data, tmp_path / "draft", settings)
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["stopped_by"] == "plateau" and training["steps"] == 3 and training["stopped_early"]
    assert trainer.reached_plateau([{"top1_depth1": v} for v in (0.1, 0.3, 0.2, 0.3)], 2)
    assert not trainer.reached_plateau([{"top1_depth1": v} for v in (0.1, 0.3, 0.2, 0.31)], 2)


def test_holdout_from_draws_the_held_out_samples_past_a_prefix_and_keeps_the_old_split_by_default(tmp_path):
    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    data = feature_data(tiny_target("llama"), tmp_path / "data")
    everything = set(range(len(data.samples)))
    train, held_out = data.split(0.25, seed=0)
    order = list(range(len(data.samples)))
    random.Random(0).shuffle(order)
    assert (train, held_out) == (order[len(held_out):], order[:len(held_out)])   # the split drafts were trained with
    train, held_out = data.split(0.25, seed=0, holdout_from=8)
    assert held_out and min(held_out) >= 8 and set(train) | set(held_out) == everything
    assert not set(train) & set(held_out)
    with pytest.raises(UserError, match="holds 12 samples"):
        data.split(0.25, seed=0, holdout_from=12)


def test_holdout_of_keeps_a_grown_folders_split_and_trains_on_the_new_samples(tmp_path):
    from tests.test_hass_fspad import feature_data
    from tests.tiny import tiny_target

    grown = feature_data(tiny_target("llama"), tmp_path / "data")
    prefix = FeatureData(tmp_path / "data", max_samples=8)     # the folder as it was before it grew
    old_train, old_held_out = prefix.split(0.25, seed=0, holdout_from=2)
    train, held_out = grown.split(0.25, seed=0, holdout_from=2, holdout_of=8)
    assert held_out == old_held_out and train == old_train + list(range(8, len(grown.samples)))
    assert grown.split(0.25, seed=0, holdout_of=len(grown.samples)) == grown.split(0.25, seed=0)
    with pytest.raises(UserError, match="holdout_of=13: .* holds 12 samples"):
        grown.split(0.25, seed=0, holdout_of=13)
    with pytest.raises(UserError, match="holdout_from=8: the split is drawn from 8 samples"):
        grown.split(0.25, seed=0, holdout_from=8, holdout_of=8)


def test_missing_data_folder_says_how_to_rebuild(tmp_path):
    """A fresh machine has no data/ folder: the message must name the rebuild from committed answers."""
    with pytest.raises(UserError, match="--answers"):
        FeatureData(tmp_path / "datagen-missing")
