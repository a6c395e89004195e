"""CORAL: lossless with and without LM-head grouping, grouped scoring, vocabulary layout, CSRA and router
losses, warm starts from an EAGLE-2 draft (every EAGLE-family method), training end to end."""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from harness import checkpoint as ckpt
from harness.drafter import METHODS
from harness.errors import UserError
from harness.train import trainer
from methods.coral import Coral, CoralFullHead, build_token_order
from methods.eagle2 import Eagle2, causal_mask
from tests.test_hass_fspad import feature_data, greedy, tiny_batch
from tests.tiny import FAMILIES, hf_greedy, tiny_target

PROMPT = torch.tensor([0, 17, 33, 2, 40, 41, 42, 17, 33])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("top_groups", [0, 1, 3])
def test_greedy_output_equals_plain_greedy_with_and_without_grouping(family, top_groups):
    target = tiny_target(family)
    drafter = Coral(target, checkpoint="random", total_tokens=12, depth=3, top_k=3, top_groups=top_groups)
    assert greedy(target, drafter, PROMPT, 24).tokens == hf_greedy(target.model, PROMPT, 24)


def test_grouped_scores_are_the_full_head_renormalised_over_the_active_subset():
    target = tiny_target("llama")
    drafter = Coral(target, checkpoint="random", top_k=4, top_groups=2)
    features = torch.randn(3, 32)
    values, ids = drafter.top_tokens(features, 4)
    net = drafter.net
    chosen = net.router(features).softmax(-1).sum(0).topk(2).indices
    group = net.group_of()
    active = (group < 0) | torch.isin(group, chosen)
    assert active.sum() < target.vocab_size and bool(active[ids].all())
    logits = target.lm_head(features)
    expected = torch.log_softmax(logits.masked_fill(~active, float("-inf")), dim=-1).topk(4)
    torch.testing.assert_close(values, expected.values)
    assert torch.equal(ids, expected.indices)
    every_group = Coral(target, checkpoint="random", top_k=4, top_groups=net.num_groups).top_tokens(features, 4)
    full = CoralFullHead(target, checkpoint="random", top_k=4).top_tokens(features, 4)
    torch.testing.assert_close(every_group[0], full[0])
    assert torch.equal(every_group[1], full[1])


@pytest.mark.parametrize("grouping", ["bisect", "frequency", "contiguous"])
def test_token_order_is_a_permutation_with_the_frequent_tokens_first_and_equal_groups(grouping):
    torch.manual_seed(0)
    weight, counts = torch.randn(100, 8), torch.randint(0, 50, (100,))
    order = build_token_order(weight, counts, num_groups=4, always_on=10, grouping=grouping)
    assert sorted(order.tolist()) == list(range(100))
    assert set(order[:10].tolist()) == set(torch.argsort(-counts, stable=True)[:10].tolist())
    if grouping == "frequency":
        assert (counts[order[10:]].diff() <= 0).all()


def test_bisection_groups_similar_lm_head_rows():
    """Rows drawn around 4 well-separated centres: bisection recovers the clusters, token-id order does not."""
    torch.manual_seed(0)
    centres = 10 * torch.randn(4, 16)
    labels = torch.arange(96) % 4
    weight = centres[labels] + torch.randn(96, 16)
    counts = torch.zeros(96, dtype=torch.long)

    def purity(order):
        groups = labels[order].reshape(4, 24)
        return sum(int(torch.bincount(g, minlength=4).max()) for g in groups) / 96

    assert purity(build_token_order(weight, counts, 4, 0, "bisect")) == 1.0
    assert purity(build_token_order(weight, counts, 4, 0, "contiguous")) < 0.5


def test_objective_adds_csra_and_a_router_loss_that_never_reaches_the_draft():
    target = tiny_target("llama")
    net, objective = Coral.training_setup(target, num_groups=4, always_on=8)
    loss, logs = objective.loss(net, tiny_batch(target))
    assert {"csra", "router", "router_acc", "reg3"} <= set(logs) and torch.isfinite(loss)
    net, objective = Coral.training_setup(target, num_groups=4, always_on=8, v_w=0.0, p_w=0.0, topk_w=0.0,
                                            csra_w=0.0)
    loss, _ = objective.loss(net, tiny_batch(target))
    loss.backward()
    grads = {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in net.named_parameters()}
    assert all(has for name, has in grads.items() if name.startswith("router."))
    assert not any(has for name, has in grads.items() if not name.startswith("router."))


def test_csra_is_lower_when_passes_agree():
    target = tiny_target("llama")
    net, objective = Coral.training_setup(target, num_groups=4, always_on=8, router_w=0.0)
    mask = torch.ones(1, 20, dtype=torch.bool)
    same = torch.randn(1, 20, 32)
    agree, _ = objective.cross_pass_loss(net, [same, same + 0.01 * torch.randn_like(same)], mask, None, None)
    disagree, _ = objective.cross_pass_loss(net, [same, torch.randn_like(same)], mask, None, None)
    assert agree < 0.1 * disagree


def test_unknown_grouping_and_too_few_scored_tokens_are_user_errors():
    target = tiny_target("llama")
    with pytest.raises(UserError, match="grouping must be one of"):
        Coral.training_setup(target, num_groups=4, always_on=8, grouping="kmeans")
    with pytest.raises(UserError, match="has 10 groups"):
        Coral(target, checkpoint="random", top_groups=11)


@pytest.mark.parametrize("method", ["hass", "coral", "fspad", "fspad-fs-only", "fspad-pad-only"])
def test_warm_start_from_an_eagle2_draft_computes_the_same_function(tmp_path, method):
    target = tiny_target("llama")
    eagle = Eagle2.load_net(target, "random")
    with torch.no_grad():
        for p in eagle.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ckpt.save(tmp_path / "eagle2", eagle.state_dict(),
              {"method": "eagle2", "target": target.fingerprint(), "architecture": Eagle2.architecture(eagle)},
              dtype=torch.float32)
    cls = METHODS.get(method)
    net, _ = cls.training_setup(target, **({"num_groups": 4, "always_on": 8} if method == "coral" else {}))
    cls.warm_start(net, target, tmp_path / "eagle2")
    embeds, features = torch.randn(1, 7, 32), torch.randn(1, 7, 32)
    args = (torch.arange(7)[None], causal_mask(7, 0, torch.float32, "cpu"))
    with torch.no_grad():
        expected = eagle(embeds, features, *args)
        for half in net.split(net(embeds, features, *args)):
            torch.testing.assert_close(half, expected)


def test_warm_start_refuses_a_draft_of_another_family(tmp_path):
    target = tiny_target("llama")
    medusa = METHODS.get("medusa")
    heads = medusa.load_net(target, "random")
    ckpt.save(tmp_path / "medusa", heads.state_dict(), {"method": "medusa", "target": target.fingerprint()})
    net, _ = Coral.training_setup(target, num_groups=4, always_on=8)
    with pytest.raises(UserError, match="not 'coral'"):
        Coral.warm_start(net, target, tmp_path / "medusa")


def test_training_writes_a_checkpoint_with_layout_router_recall_and_full_head_variant(tmp_path):
    target = tiny_target("llama")
    data = feature_data(target, tmp_path / "data")
    settings = trainer.TrainConfig(epochs=3, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=2)
    loss = {"noise": 0.0, "num_groups": 4, "always_on": 8}
    out = trainer.train(Coral, target, data, tmp_path / "draft", settings, loss)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == {"bias": True, "num_groups": 4, "always_on": 8, "grouping": "bisect"}
    assert config["loss"]["csra_w"] > 0 and config["loss"]["passes"] == 3
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["token_order"].dtype == torch.int64 and sorted(tensors["token_order"].tolist()) == list(range(96))
    recalls = [float(row["router_recall"]) for row in csv.DictReader(open(out / "eval_log.csv"))]
    assert len(recalls) == 3 and all(0 <= r <= 1 for r in recalls)
    prompt = torch.tensor([0, 5, 6, 7])
    for cls in (Coral, CoralFullHead):
        drafter = cls(target, checkpoint=str(out), total_tokens=10, depth=2, top_k=3, top_groups=1)
        assert torch.equal(drafter.net.token_order, tensors["token_order"])
        assert greedy(target, drafter, prompt, 16).tokens == hf_greedy(target.model, prompt, 16)


def test_export_leaves_the_router_out(tmp_path):
    target = tiny_target("llama")
    out = Coral.export(Coral.load_net(target, "random"), target, tmp_path / "out", "vllm")
    keys = set(load_file(str(out / "model.safetensors")))
    assert "fc.weight" in keys and not any(k.startswith(("router.", "token_order")) for k in keys)


@pytest.mark.parametrize("method", ["fspad", "fspad-fs-only", "fspad-pad-only"])
def test_fspad_warm_starts_from_its_own_checkpoint_unchanged(tmp_path, method):
    target = tiny_target("llama")
    cls = METHODS.get(method)
    first = cls.load_net(target, "random")
    ckpt.save(tmp_path / "own", first.state_dict(),
              {"method": method, "target": target.fingerprint(), "architecture": cls.architecture(first)},
              dtype=torch.float32)
    net, _ = cls.training_setup(target)
    cls.warm_start(net, target, tmp_path / "own")
    for key, value in first.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value)
