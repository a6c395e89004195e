"""Medusa: lossless greedy, heads fed the right feature, static tree buffers, checkpoints, typical acceptance, training."""
import csv
import json
import math

import pytest
import torch

from harness.decode import generate
from harness.errors import UserError
from harness.sampling import SamplingParams
from harness.train import trainer
from harness.train.data import FeatureData
from harness.train.datagen import save_shard, shard_tensors
from harness.tree import DraftTree
from methods._medusa_trees import build_buffers, choices_from_accuracies, default_top1, rank_accuracies
from methods.medusa import Medusa, TypicalVerifier
from tests.tiny import FAMILIES, hf_greedy, tiny_target

PROMPTS = [torch.tensor([0, 5, 9, 5, 9, 5]), torch.tensor([0, 17, 33, 2, 40, 41, 42, 17, 33])]
STOP = frozenset({1})


def run(target, drafter, prompt, temperature=0.0, max_new_tokens=40, seed=0):
    return generate(target, drafter, drafter.verifier(), prompt, max_new_tokens=max_new_tokens, stop_ids=STOP,
                    sampling=SamplingParams(temperature=temperature), rng=torch.Generator().manual_seed(seed))


def randomize(drafter: Medusa, scale: float = 0.5) -> Medusa:
    """Untrained heads are the identity; random ResBlocks give varied drafts."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in drafter.net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
    return drafter


@pytest.mark.parametrize("family", FAMILIES)
def test_random_heads_match_plain_greedy(family):
    # Untrained (identity) heads are covered by tests/test_lossless.py; random ones give varied trees.
    target = tiny_target(family)
    drafter = randomize(Medusa(target, checkpoint="random"))
    assert drafter.turn_decoder().lossless and type(drafter.verifier()).__name__ == "Verifier"
    gen = run(target, drafter, PROMPTS[1])
    assert gen.tokens == hf_greedy(target.model, PROMPTS[1], 40)
    assert set(gen.tree_sizes) == {64}


def test_heads_read_the_feature_of_the_position_before_the_root():
    target = tiny_target("llama")
    drafter = randomize(Medusa(target, checkpoint="random", tree_size=20, top_k=4))
    seen, propose = [], drafter.propose
    drafter.propose = lambda root: seen.append(drafter.feature.clone()) or propose(root)
    prompt = PROMPTS[1]
    gen = run(target, drafter, prompt, temperature=1.0, max_new_tokens=30)
    emitted = 0
    for step, feature in enumerate(seen):
        emitted += gen.accept_lengths[step]          # the last of these is the root being drafted from
        context = torch.cat([prompt, torch.tensor(gen.tokens[: emitted - 1], dtype=torch.long)])
        with torch.no_grad():
            expected = target.model.get_decoder()(input_ids=context[None]).last_hidden_state[0, -1]
        torch.testing.assert_close(feature, expected, atol=1e-4, rtol=1e-4)


def test_tree_buffers_from_choices_are_valid():
    choices = choices_from_accuracies(default_top1(4), 63, 10)
    assert len(choices) == 63 and max(map(len, choices)) == 4
    assert all(c[:-1] in choices for c in choices if len(c) > 1)
    chance = [rank_accuracies(a, 10) for a in default_top1(4)]
    left_out = [(1, 1, 0), (9,), (0, 0, 0, 5)]
    worst_in = min(math.prod(chance[d][r] for d, r in enumerate(c)) for c in choices)
    assert all(c not in choices and math.prod(chance[d][r] for d, r in enumerate(c)) <= worst_in for c in left_out)
    buffers = build_buffers(choices)
    tree = DraftTree(tokens=torch.arange(64), parents=buffers.parents)   # validates parents before children
    assert tree.depth[1:].tolist() == [len(c) for c in choices]
    for node, kids in enumerate(tree.children):
        ranks = [choices[k - 1][-1] for k in kids]
        assert ranks == sorted(ranks) and ranks == list(range(len(ranks)))   # siblings best-first
    assert buffers.slots.tolist() == [(len(c) - 1) * buffers.top_k + c[-1] for c in choices]
    with pytest.raises(ValueError, match="prefix"):
        build_buffers([(0,), (1, 0)])


def test_drafts_are_the_heads_top_k_in_tree_order():
    target = tiny_target("qwen2")
    drafter = randomize(Medusa(target, checkpoint="random", choices=[[1], [0], [0, 0], [0, 2], [1, 0], [0, 0, 0]]))
    prompt = PROMPTS[0]
    drafter.start(prompt, target.prefill(prompt), SamplingParams())
    tree = drafter.propose(torch.tensor(7))
    with torch.no_grad():
        top = [drafter.net.head(k, drafter.feature, target.lm_head).topk(3).indices.tolist() for k in range(3)]
    assert tree.tokens.tolist() == [7, top[0][0], top[0][1], top[1][0], top[1][2], top[1][0], top[2][0]]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2, 3]


def write_released(where, tensors: dict, heads_in_config: int = 2) -> None:
    where.mkdir()
    torch.save(tensors, where / "medusa_lm_head.pt")
    (where / "config.json").write_text(json.dumps({"medusa_num_heads": heads_in_config, "medusa_num_layers": 1,
                                                   "base_model_name_or_path": "tiny-llama"}))


@pytest.mark.parametrize("layers,own", [(1, True), (2, True), (1, False)])
def test_released_layout_loads(tmp_path, layers, own):
    target = tiny_target("llama")
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(5):
        block_w, block_b = torch.randn(32, 32, generator=g), torch.randn(32, generator=g)
        for j in range(layers):    # [ResBlock] * n: the state dict repeats the one shared block
            tensors[f"{i}.{j}.linear.weight"], tensors[f"{i}.{j}.linear.bias"] = block_w, block_b
        if own:
            tensors[f"{i}.{layers}.weight"] = torch.randn(96, 32, generator=g)
    write_released(tmp_path / "m", tensors)
    drafter = Medusa(target, checkpoint=str(tmp_path / "m"))
    net = drafter.net
    assert len(net.heads) == 5 and net.layers == layers and net.own_projection == own
    for key, value in tensors.items():
        torch.testing.assert_close(net.state_dict()[f"heads.{key}"], value)
    x = torch.randn(32, generator=g)
    h = x + torch.nn.functional.silu(tensors["4.0.linear.weight"] @ x + tensors["4.0.linear.bias"])
    if layers == 2:
        h = h + torch.nn.functional.silu(tensors["4.0.linear.weight"] @ h + tensors["4.0.linear.bias"])
    want = tensors[f"4.{layers}.weight"] @ h if own else target.lm_head(h)
    torch.testing.assert_close(net.head(4, x, target.lm_head), want, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_for_another_target_is_refused(tmp_path):
    tensors = {"0.0.linear.weight": torch.zeros(32, 32), "0.0.linear.bias": torch.zeros(32),
               "0.1.weight": torch.zeros(96, 32)}
    write_released(tmp_path / "m", tensors)
    with pytest.raises(UserError, match="vocab_size 96 vs 128"):
        Medusa(tiny_target("llama", vocab=128), checkpoint=str(tmp_path / "m"))
    with pytest.raises(UserError, match="python -m harness train --method medusa"):
        Medusa(tiny_target("llama"), checkpoint="/no/such/dir")


def test_typical_acceptance_is_labelled_lossy_and_greedy_at_t0():
    target = tiny_target("llama")
    drafter = randomize(Medusa(target, checkpoint="random", acceptance="typical"))
    assert isinstance(drafter.verifier(), TypicalVerifier) and drafter.turn_decoder().lossless is False
    assert Medusa(target, checkpoint="random").turn_decoder().lossless is True
    assert run(target, drafter, PROMPTS[0]).tokens == hf_greedy(target.model, PROMPTS[0], 40)
    assert run(target, drafter, PROMPTS[0], temperature=1.0, max_new_tokens=10).stop_reason
    with pytest.raises(UserError, match="acceptance"):
        Medusa(target, checkpoint="random", acceptance="nucleus")


def test_typical_rule_takes_the_longest_then_most_likely_accepted_path():
    # root -> a(1) -> c(3); root -> b(2). Logits give p(a) = p(b) = 0.45 at the root, p(c) = 0.9 under a.
    tree = DraftTree(tokens=torch.tensor([0, 1, 2, 3]), parents=torch.tensor([-1, 0, 0, 1]))
    logits = torch.full((4, 5), -30.0)
    logits[0, 1] = logits[0, 2] = 0.0
    logits[0, 4] = math.log(0.1 / 0.45)
    logits[1, 3], logits[1, 0] = 0.0, math.log(0.1 / 0.9)
    logits[3, 4] = 0.0
    verdict = TypicalVerifier(0.09, 0.3).verify(tree, logits, SamplingParams(temperature=1.0), torch.Generator())
    assert verdict.path.tolist() == [0, 1, 3] and verdict.accepted == 2 and verdict.bonus == 4
    strict = TypicalVerifier(0.95, 2.0).verify(tree, logits, SamplingParams(temperature=1.0), torch.Generator())
    assert strict.accepted == 0 and strict.bonus in (1, 2)   # only the most likely tokens survive


def tiny_data(target, where, samples: int = 12, answer: int = 30):
    """Datagen-style shard: the tiny target's own greedy answers to random prompts, with its features."""
    prompts = torch.cat([torch.zeros(samples, 1, dtype=torch.long),
                         torch.randint(2, 96, (samples, 5), generator=torch.Generator().manual_seed(1))], dim=1)
    with torch.no_grad():
        ids = target.model.generate(prompts, max_new_tokens=answer, min_new_tokens=answer, do_sample=False,
                                    pad_token_id=1)
        hidden = target.model.get_decoder()(input_ids=ids).last_hidden_state
    mask = torch.tensor([0] * prompts.shape[1] + [1] * answer, dtype=torch.uint8)
    where.mkdir()
    save_shard(where / "shard_00000.safetensors",
               shard_tensors([(row.int(), mask, h.to(torch.bfloat16)) for row, h in zip(ids, hidden)]))
    (where / "manifest.json").write_text(json.dumps({"target": target.fingerprint(), "settings": {},
                                                     "shards": [{"file": "shard_00000.safetensors"}]}))
    return FeatureData(where)


def test_training_lowers_the_loss_and_the_checkpoint_loads(tmp_path):
    target = tiny_target("llama")
    data = tiny_data(target, tmp_path / "data")
    config = trainer.TrainConfig(epochs=8, batch_size=4, lr=2e-2, warmup_steps=1, holdout=0.2, eval_depths=2)
    trainer.train(Medusa, target, data, tmp_path / "heads", config, {"heads": 3})
    with open(tmp_path / "heads" / "train_log.csv") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    saved = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert saved["architecture"] == {"heads": 3, "layers": 1, "share_lm_head": True}
    assert "top1_depth3" in saved["training"]["evals"][-1]
    drafter = Medusa(target, checkpoint=str(tmp_path / "heads"))
    assert drafter.tree.heads == 3
    assert run(target, drafter, PROMPTS[0], max_new_tokens=20).tokens == hf_greedy(target.model, PROMPTS[0], 20)
