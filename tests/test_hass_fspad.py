"""HASS and FSPAD: lossless drafting, FSPAD trees and checkpoints, HASS context alignment, short training runs."""
import csv
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from harness import checkpoint as ckpt
from harness.decode import generate
from harness.drafter import METHODS
from harness.errors import UserError
from harness.sampling import SamplingParams
from harness.train import trainer
from harness.train.data import Batch, FeatureData
from harness.train.datagen import save_shard, shard_tensors
from harness.verify import Verifier
from methods._eagle_train import aligned_mask, aligned_passes
from methods.eagle2 import causal_mask
from methods.fspad import Fspad
from methods.hass import Hass
from tests.tiny import FAMILIES, hf_greedy, tiny_target

METHOD_NAMES = ("hass", "fspad", "fspad-fs-only", "fspad-pad-only")


def greedy(target, drafter, prompt, max_new_tokens):
    return generate(target, drafter, Verifier(), prompt, max_new_tokens=max_new_tokens, stop_ids=frozenset({1}),
                    sampling=SamplingParams(), rng=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_small_trees_match_plain_greedy(family, method):
    target = tiny_target(family)
    drafter = METHODS.get(method)(target, checkpoint="random", total_tokens=12, depth=3, top_k=3)
    prompt = torch.tensor([0, 17, 33, 2, 40, 41, 42, 17, 33])
    gen = greedy(target, drafter, prompt, 24)
    assert gen.tokens == hf_greedy(target.model, prompt, 24)


def test_hass_reads_and_writes_the_eagle_layout(tmp_path):
    target = tiny_target("qwen2")
    net = Hass.load_net(target, "random")
    Hass.export(net, target, tmp_path / "released", "eagle")
    loaded = Hass.load_net(target, str(tmp_path / "released"))
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())


def test_fspad_released_layout_pytorch_bin_loads_and_reproduces_outputs(tmp_path):
    target = tiny_target("llama")
    torch.manual_seed(3)
    net = Fspad.build_net(target).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tensors = {k: v.clone() for k, v in net.state_dict().items()}
    assert tensors["layers.0.mlp.down_proj.weight"].shape == (2 * 32, 64)
    assert {"fc.fc.bias", "fc.mlp.gate_proj.weight", "fc.post_attention_layernorm.weight"} <= set(tensors)
    tensors["embed_tokens.weight"] = torch.randn(96, 32)
    folder = tmp_path / "fspad"
    folder.mkdir()
    torch.save(tensors, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 96,
                                                    "hidden_size": 32, "num_hidden_layers": 1}))
    loaded = Fspad(target, checkpoint=str(folder)).net
    embeds, features = torch.randn(1, 7, 32), torch.randn(1, 7, 32)
    args = (torch.arange(7)[None], causal_mask(7, 0, torch.float32, "cpu"))
    torch.testing.assert_close(loaded(embeds, features, *args), net(embeds, features, *args))


@pytest.mark.parametrize("method", ["fspad-fs-only", "fspad-pad-only"])
def test_ablation_checkpoints_rebuild_their_own_net(tmp_path, method):
    target = tiny_target("llama")
    cls = METHODS.get(method)
    net = cls.load_net(target, "random")
    manifest = {"method": method, "target": target.fingerprint(), "architecture": cls.architecture(net)}
    ckpt.save(tmp_path / "draft", net.state_dict(), manifest, dtype=torch.float32)
    loaded = cls.load_net(target, str(tmp_path / "draft"))
    assert (loaded.feature_sampling, loaded.partial_alignment) == (net.feature_sampling, net.partial_alignment)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(UserError, match="not 'fspad'"):
        Fspad.load_net(target, str(tmp_path / "draft"))


def test_fspad_export_is_refused(tmp_path):
    target = tiny_target("llama")
    with pytest.raises(UserError, match="cannot be exported"):
        Fspad.export(Fspad.load_net(target, "random"), target, tmp_path / "out", "vllm")


def test_aligned_mask_of_pass_three_matches_hand_computed_case():
    # Keys: pass-1 (target features) causal up to t-2, pass-2 only at t-1, pass-3 only at t.
    expected = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
                             [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0],
                             [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
                             [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(aligned_mask(4, 3, torch.float32, "cpu")[0, 0] == 0, expected)


@pytest.mark.parametrize("method", ["hass", "fspad"])
def test_aligned_pass_j_equals_drafting_j_levels_deep(method):
    """Pass j at position t = the draft run causally on target features up to t-j+1, then on its own outputs."""
    target = tiny_target("llama")
    net = METHODS.get(method).load_net(target, "random")
    torch.manual_seed(1)
    length = 7
    embeds, features = torch.randn(1, length, 32), torch.randn(1, length, 32)
    with torch.no_grad():
        passes = aligned_passes(net, embeds, features, 3)
        for j, out in enumerate(passes, 1):
            for t in range(j - 1, length):
                chain = [features[0, s] for s in range(t - j + 2)]
                while True:
                    n = len(chain)
                    step = net(embeds[:, :n], torch.stack(chain)[None], torch.arange(n)[None],
                               causal_mask(n, 0, torch.float32, "cpu"))
                    if n == t + 1:
                        break
                    chain.append(net.split(step)[1][0, -1])
                torch.testing.assert_close(step[0, -1], out[0, t], atol=1e-5, rtol=1e-4)


def tiny_batch(target, samples: int = 2, length: int = 12) -> Batch:
    torch.manual_seed(2)
    ids = torch.randint(2, 96, (samples, length))
    with torch.no_grad():
        hidden = target.model.model(ids).last_hidden_state
    loss_mask = torch.arange(length).expand(samples, -1) >= 3
    return Batch(ids, hidden, loss_mask, torch.ones(samples, length, dtype=torch.bool))


def test_hass_objective_runs_three_passes_forward_and_backward():
    target = tiny_target("llama")
    net, objective = Hass.training_setup(target)
    loss, logs = objective.loss(net, tiny_batch(target))
    loss.backward()
    assert {"reg1", "reg3", "ce3", "acc3"} <= set(logs) and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_hass_top_k_distillation_adds_the_target_top_k_cross_entropy():
    """topk_w weighs -sum over the target's top-K tokens of p log q, on top of EAGLE's terms (one pass, no noise)."""
    target = tiny_target("llama")
    net, with_topk = Hass.training_setup(target, passes=1, noise=0.0, topk=4)
    _, without = Hass.training_setup(target, passes=1, noise=0.0, topk_w=0.0)
    batch = tiny_batch(target)
    embeds, features, wanted, mask = with_topk.inputs(batch, 0.0)
    with torch.no_grad():
        out = net(embeds, features, torch.arange(11)[None].expand(2, -1), causal_mask(11, 0, torch.float32, "cpu"))
        p = torch.softmax(with_topk.head(wanted[mask]), -1)
        logq = torch.log_softmax(with_topk.head(out[mask]), -1)
        top_p, top_i = p.topk(4, dim=-1)
        expected = -(top_p * logq.gather(-1, top_i)).sum(-1).mean()
        difference = with_topk.loss(net, batch)[0] - without.loss(net, batch)[0]
    assert difference.item() == pytest.approx(expected.item(), rel=1e-4)


def test_fspad_objective_regresses_the_regress_half_and_heads_the_predict_half():
    target = tiny_target("llama")
    net, objective = Fspad.training_setup(target, noise=0.0)
    batch = tiny_batch(target)
    _, logs = objective.loss(net, batch)
    embeds, features, wanted, mask = objective.inputs(batch, 0.0)
    with torch.no_grad():
        predict, regress = net.split(net(embeds, features, torch.arange(11)[None].expand(2, -1),
                                         causal_mask(11, 0, torch.float32, "cpu")))
        reg = torch.nn.functional.smooth_l1_loss(regress[mask], wanted[mask])
        target_p = torch.softmax(objective.head(wanted[mask]), -1)
        ce = -(target_p * torch.log_softmax(objective.head(predict[mask]), -1)).sum(-1).mean()
    assert logs["reg1"] == pytest.approx(reg.item(), rel=1e-4) and logs["ce1"] == pytest.approx(ce.item(), rel=1e-4)


def feature_data(target, folder, samples: int = 12, length: int = 24) -> FeatureData:
    """Random token sequences with the tiny target's own features, written as one datagen shard."""
    generator = torch.Generator().manual_seed(4)
    rows = []
    with torch.no_grad():
        for _ in range(samples):
            ids = torch.randint(2, 96, (length,), generator=generator)
            hidden = target.model.model(ids[None]).last_hidden_state[0]
            rows.append((ids, torch.arange(length) >= 4, hidden))
    folder.mkdir()
    save_shard(folder / "shard_00000.safetensors", shard_tensors(rows))
    manifest = {"target": target.fingerprint(), "settings": {}, "shards": [{"file": "shard_00000.safetensors"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return FeatureData(folder)


@pytest.mark.parametrize("method", ["hass", "fspad"])
def test_short_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path, method):
    target = tiny_target("llama")
    cls = METHODS.get(method)
    data = feature_data(target, tmp_path / "data")
    settings = trainer.TrainConfig(epochs=8, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=2)
    out = trainer.train(cls, target, data, tmp_path / "draft", settings, {"noise": 0.0})
    losses = [float(row["loss"]) for row in csv.DictReader(open(out / "train_log.csv"))]
    assert len(losses) == 24 and sum(losses[-3:]) < 0.95 * sum(losses[:3])
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["loss"]["passes"] == (3 if method == "hass" else 1)
    if method == "fspad":
        assert config["architecture"] == {"bias": True, "feature_sampling": True, "partial_alignment": True}
        assert load_file(str(out / "model.safetensors"))["layers.0.mlp.down_proj.weight"].shape == (64, 64)
    drafter = cls(target, checkpoint=str(out), total_tokens=10, depth=2, top_k=3)
    prompt = torch.tensor([0, 5, 6, 7])
    assert greedy(target, drafter, prompt, 16).tokens == hf_greedy(target.model, prompt, 16)


def with_stored_topk(target, batch, k: int):
    """The batch as datagen --topk-logprobs K stores it: the target head's top-K log-probs at every position."""
    with torch.no_grad():
        top = torch.log_softmax(target.lm_head(batch.hidden).float(), -1).topk(k)
    return dataclasses.replace(batch, topk_ids=top.indices, topk_logp=top.values)


@pytest.mark.parametrize("method", ["eagle2", "hass", "coral"])
def test_stored_top_k_log_probs_give_the_losses_of_the_lm_head_when_k_is_the_vocabulary(tmp_path, method):
    """With K = V the stored labels are the full distribution: every loss term, its gradient and the
    held-out metric equal the head-computed ones; with K < V the top-1 and the top-K term still do."""
    target = tiny_target("llama")
    cls = METHODS.get(method)
    data = feature_data(target, tmp_path / "data")
    sizes = {"num_groups": 4, "always_on": 8} if method == "coral" else {}
    net, objective = cls.training_setup(target, data, noise=0.0, ce_sample=40, **sizes)
    batch = data.collate(list(range(4)), "cpu")
    vocab = target.lm_head.weight.shape[0]
    results = []
    for labelled in (batch, with_stored_topk(target, batch, vocab)):
        torch.manual_seed(0)   # the same sampled positions
        net.zero_grad()
        loss, logs = objective.loss(net, labelled)
        loss.backward()
        grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
        results.append((loss.item(), logs, grads, objective.evaluate(net, labelled, 3)))
    (loss_a, logs_a, grads_a, eval_a), (loss_b, logs_b, grads_b, eval_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-5) and eval_a == eval_b
    assert logs_a.keys() == logs_b.keys() and all(logs_b[k] == pytest.approx(logs_a[k], rel=1e-4, abs=1e-6)
                                                   for k in logs_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.manual_seed(0)
    _, logs_k = objective.loss(net, with_stored_topk(target, batch, 12))
    assert logs_k["acc1"] == pytest.approx(logs_a["acc1"]) and objective.evaluate(
        net, with_stored_topk(target, batch, 12), 3) == eval_a


def test_hass_refuses_fewer_stored_log_probs_than_its_top_k_term(tmp_path):
    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")
    net, objective = METHODS.get("hass").training_setup(target, data)
    with pytest.raises(UserError, match="top 5 log-probs; the loss's topk=10"):
        objective.loss(net, with_stored_topk(target, data.collate([0, 1], "cpu"), 5))
