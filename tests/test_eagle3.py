"""EAGLE-3: lossless drafting with a draft vocabulary smaller than the target's, the training-time-test unroll
against tree drafting, the d2t / t2d maps, the released / engine layout, and a short training run."""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from harness.decode import generate
from harness.errors import UserError
from harness.sampling import SamplingParams
from harness.train import trainer
from harness.train.data import Batch, FeatureData
from harness.train.datagen import eagle3_layers, save_shard, shard_tensors
from harness.verify import Verifier
from methods._eagle3_train import draft_vocabulary, unroll
from methods.eagle3 import Eagle3, draft_ids_of, vocab_maps
from tests.test_verify import chi_square_p
from tests.tiny import FAMILIES, hf_greedy, load_benchmark, tiny_target

PROMPT = torch.tensor([0, 17, 33, 2, 40, 41, 42, 17, 33])


def run(target, drafter, prompt, max_new_tokens, sampling=SamplingParams(), seed=0, stop=frozenset({1})):
    return generate(target, drafter, Verifier(), prompt, max_new_tokens=max_new_tokens, stop_ids=stop,
                    sampling=sampling, rng=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_output_equals_vanilla_with_a_smaller_draft_vocabulary(family):
    target = tiny_target(family)
    drafter = Eagle3(target, checkpoint="random", total_tokens=20, depth=4, top_k=4)
    assert drafter.net.draft_vocab_size == 48 < target.vocab_size
    gen = run(target, drafter, PROMPT, 40)
    assert gen.tokens == hf_greedy(target.model, PROMPT, 40)
    assert sum(gen.accept_lengths) == len(gen.tokens)


def test_tree_tokens_are_all_in_the_draft_vocabulary():
    target = tiny_target("llama")
    drafter = Eagle3(target, checkpoint="random", total_tokens=30, depth=3, top_k=5)
    target.use_taps(drafter.taps)
    out = target.prefill(PROMPT)
    drafter.start(PROMPT, out, SamplingParams())
    tree = drafter.propose(torch.tensor(5))
    assert bool(drafter.net.t2d[tree.tokens[1:]].all())


def test_sampling_keeps_the_target_distribution_with_a_smaller_draft_vocabulary():
    """Two sampled tokens at T=1 against the target's exact joint distribution (chi-square), V_d = 8 of 16."""
    target = tiny_target("llama", vocab=16)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.25)   # flatter than the tiny default, so many cells are populated
    drafter = Eagle3(target, checkpoint="random", total_tokens=8, depth=2, top_k=2)
    assert drafter.net.draft_vocab_size == 8
    prompt, params = torch.tensor([0, 5, 9]), SamplingParams(1.0)
    with torch.no_grad():
        first = torch.softmax(target.model(prompt[None]).logits[0, -1], -1)
        joint = torch.stack([first[a] * torch.softmax(target.model(torch.cat([prompt, torch.tensor([a])])[None])
                                                      .logits[0, -1], -1) for a in range(16)]).flatten()
    counts, paths = torch.zeros(256), []
    real_accept = drafter.accept
    drafter.accept = lambda tree, verdict, out: paths.append(len(verdict.path)) or real_accept(tree, verdict, out)
    for trial in range(1500):
        gen = run(target, drafter, prompt, 2, params, seed=trial, stop=frozenset())
        counts[gen.tokens[0] * 16 + gen.tokens[1]] += 1
    assert sum(n > 1 for n in paths) > 100, "drafts should be accepted sometimes, or the test checks little"
    assert chi_square_p(counts, joint) > 1e-3


def test_training_unroll_equals_tree_drafting_levels():
    """Step i of the training-time-test unroll at the last context index gives the same draft log-probabilities
    as tree level i+1 at inference: the drafter's recorded cumulative scores of several paths."""
    target = tiny_target("llama")
    drafter = Eagle3(target, checkpoint="random", total_tokens=40, depth=3, top_k=3)
    target.use_taps(drafter.taps)
    out = target.prefill(PROMPT)
    drafter.start(PROMPT, out, SamplingParams())
    captured = {}
    real_select = drafter.select
    drafter.select = lambda *args: captured.update(args=args) or real_select(*args)
    root, net = 5, drafter.net
    with torch.no_grad():
        drafter.propose(torch.tensor(root))
        _, tokens, scores, parents = (a.tolist() for a in captured["args"])
        draft_index = torch.cumsum(net.t2d.long(), 0) - 1          # target id -> draft id
        fused = torch.cat(out.taps, dim=-1)
        checked = 0
        for node in range(0, len(tokens), 5):
            path, walk = [], node
            while walk >= 0:
                path.insert(0, tokens[walk])
                walk = parents[walk]
            ids = torch.cat([PROMPT, torch.tensor([root] + path)])[None]
            layers = torch.cat([fused, torch.randn(len(path) + 1, fused.shape[1])])[None]   # unused positions
            steps = unroll(net, target.embed, ids, layers, len(path))
            expected = sum(float(torch.log_softmax(net.head(step[0, len(PROMPT) - 1]), -1)[draft_index[token]])
                           for step, token in zip(steps, path))
            assert abs(scores[node] - expected) < 1e-4
            checked += 1
    assert checked >= 5 and max(len(p) for p in [path]) >= 1


def dense_unroll(net, embed, ids, fused, steps, wanted=None):
    """The unroll as a dense attention (the formulation before the diagonal one): a cache of all steps' keys,
    (i+1)L of them at step i, and an additive [L, (i+1)L] mask (step-0 keys causal, step-j keys at t only)."""
    from transformers.cache_utils import Cache, DynamicLayer
    from methods._eagle3_train import shift
    batch, length = ids.shape[0], ids.shape[1] - 1
    hidden = net.fuse(fused[:, :-1])
    cache = Cache(layer_class_to_replicate=DynamicLayer)
    positions = torch.arange(length)[None].expand(batch, -1)
    t = torch.arange(length)
    outputs = []
    for i in range(steps):
        embeds = embed(shift(ids[:, 1:], i)).to(hidden.dtype)
        allowed = torch.cat([t[None, :] <= t[:, None]] + [t[None, :] == t[:, None]] * i, dim=1)
        mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)[None, None]
        hidden = net(embeds, hidden, positions + i, mask, cache)
        outputs.append(hidden)
    return outputs


@pytest.mark.parametrize("ce_sample", [0, 6])
def test_diagonal_unroll_equals_the_dense_attention_in_loss_and_gradients(monkeypatch, ce_sample):
    """The unroll's causal-plus-diagonal attention, run only at the positions the loss reads, gives the dense
    [L, (i+1)L]-mask formulation's outputs, loss and gradients (fp32, GQA: 4 heads over 2 kv heads)."""
    import methods._eagle3_train as train
    target = tiny_target("llama")
    net, objective = Eagle3.training_setup(target, None, draft_vocab=40, steps=4, ce_sample=ce_sample)
    torch.manual_seed(1)
    for param in net.parameters():                  # sharper attention than the default init
        param.data.normal_(0, 0.3)
    ids = torch.randint(2, 96, (3, 21))
    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[2, 15:] = False
    batch = Batch(ids, torch.randn(3, 21, 32), torch.rand(3, 21) < 0.7, valid, torch.randn(3, 21, 96))
    fast = unroll(net, target.embed, ids, batch.layers, 4)
    dense = dense_unroll(net, target.embed, ids, batch.layers, 4)
    for a, b in zip(fast, dense):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    some = [torch.rand(3, 20) < 0.3 for _ in range(4)]      # only the wanted positions (and what they need)
    for i, (a, b) in enumerate(zip(unroll(net, target.embed, ids, batch.layers, 4, some), dense)):
        needed = torch.stack(some[max(i, 1):]).any(0) if i else torch.ones(3, 20, dtype=torch.bool)
        torch.testing.assert_close(a[needed], b[needed], atol=1e-5, rtol=1e-5)
    results = []
    for how in (train.unroll, dense_unroll):
        monkeypatch.setattr(train, "unroll", how)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(2)
        loss, logs = objective.loss(net, batch)
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}, logs))
    (loss, grads, logs), (dense_loss, dense_grads, dense_logs) = results
    assert float(loss) > 0 and logs.keys() == dense_logs.keys()
    for name in logs:
        assert abs(logs[name] - dense_logs[name]) < 1e-5, name
    evals = []
    for how in (train.unroll, dense_unroll):
        monkeypatch.setattr(train, "unroll", how)
        evals.append(objective.evaluate(net, batch, 4))
    assert evals[0] == evals[1]
    torch.testing.assert_close(loss, dense_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == dense_grads.keys() and len(grads) > 5
    for name in grads:
        torch.testing.assert_close(grads[name], dense_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_d2t_and_t2d_round_trip():
    vocab = torch.tensor([3, 0, 17, 95, 40])
    d2t, t2d = vocab_maps(vocab, 96)
    assert d2t.dtype == torch.long and t2d.dtype == torch.bool and t2d.shape == (96,)
    assert draft_ids_of(d2t).tolist() == [0, 3, 17, 40, 95]             # target id = i + d2t[i]
    assert t2d.nonzero().flatten().tolist() == [0, 3, 17, 40, 95]
    assert torch.equal(vocab_maps(draft_ids_of(d2t), 96)[0], d2t)


def test_draft_vocabulary_keeps_the_most_frequent_answer_tokens():
    class Data:
        samples = [(torch.tensor([5, 5, 7, 9, 9, 9, 2]), torch.tensor([0, 1, 1, 1, 1, 1, 1]).bool()),
                   (torch.tensor([2, 2, 5, 11]), torch.tensor([1, 1, 0, 1]).bool())]
    # answer-token counts: 9 x3, 2 x3, 5 x1, 7 x1, 11 x1 -> top 3: 2, 9, then 5 (lowest id among ties)
    assert draft_vocabulary(Data, 3, 16).tolist() == [2, 5, 9]
    assert draft_vocabulary(Data, 7, 16).tolist() == [0, 1, 2, 5, 7, 9, 11]   # padded with unused low ids


def test_vocab_cuts_ranks_a_folder_as_training_does_and_counts_steps_cut_by_the_vocabulary(tmp_path):
    vocab_cuts = load_benchmark("vocab_cuts")
    target = tiny_target("llama")
    data = layer_data(target, tmp_path / "data")
    tokens = FeatureData(tmp_path / "data", fields=("ids", "loss_mask"))   # what outside_top ranks
    assert all(s.hidden is None and s.layers is None for s in tokens.samples)
    assert draft_vocabulary(tokens, 20, 96).tolist() == draft_vocabulary(data, 20, 96).tolist()
    short = FeatureData(tmp_path / "data", max_len=10, fields=("ids", "loss_mask"))
    assert [len(sample.ids) for sample in short.samples] == [10] * 12
    assert len(FeatureData(tmp_path / "data", max_samples=5, fields=("ids", "loss_mask")).samples) == 5
    with pytest.raises(ValueError, match="loss_mask"):
        FeatureData(tmp_path / "data", fields=("ids",))
    outside = torch.zeros(96, dtype=torch.bool)
    outside[7] = True
    # one turn of 8 tokens in 3 steps accepting 3, 4, 1: drafts [0:2], [3:6], none; token 7 sits at index 4
    row = {"token_ids": [[1, 2, 3, 4, 7, 5, 6, 7]], "choices": [{"accept_lengths": [3, 4, 1], "decoding_steps": [3]}]}
    assert vocab_cuts.step_counts([row], outside) == (3, 1, 2 / 8)


def expected_keys(target, vocab_size: int) -> dict[str, tuple]:
    """The released EAGLE-3 layout (SafeAILab/EAGLE cnets.py Model; vLLM / SGLang llama_eagle3.py) for a target."""
    c, hidden = target.config, target.hidden_size
    head_dim = hidden // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    return {"fc.weight": (hidden, 3 * hidden), "midlayer.self_attn.q_proj.weight": (q, 2 * hidden),
            "midlayer.self_attn.k_proj.weight": (kv, 2 * hidden), "midlayer.self_attn.v_proj.weight": (kv, 2 * hidden),
            "midlayer.self_attn.o_proj.weight": (hidden, q),
            "midlayer.mlp.gate_proj.weight": (c.intermediate_size, hidden),
            "midlayer.mlp.up_proj.weight": (c.intermediate_size, hidden),
            "midlayer.mlp.down_proj.weight": (hidden, c.intermediate_size),
            "midlayer.hidden_norm.weight": (hidden,), "midlayer.input_layernorm.weight": (hidden,),
            "midlayer.post_attention_layernorm.weight": (hidden,), "norm.weight": (hidden,),
            "lm_head.weight": (vocab_size, hidden), "d2t": (vocab_size,), "t2d": (target.vocab_size,)}


@pytest.mark.parametrize("flavor", ["eagle", "vllm", "sglang"])
def test_export_writes_the_released_layout_and_imports_back(tmp_path, flavor):
    target = tiny_target("llama")
    net = Eagle3.load_net(target, "random")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))   # norms away from ones, so a dropped tensor shows
    out = Eagle3.export(net, target, tmp_path / flavor, flavor, dtype=torch.float32)
    saved = load_file(str(out / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in saved.items()} == expected_keys(target, 48)
    assert saved["d2t"].dtype == torch.int64 and saved["t2d"].dtype == torch.bool
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == 48
    assert config["vocab_size"] == 96 and config["num_hidden_layers"] == 1 and config["tie_word_embeddings"] is False
    assert "bias" not in config and config["attention_bias"] is False
    assert config["eagle_aux_hidden_state_layer_ids"] == list(eagle3_layers(2))
    loaded = Eagle3.load_net(target, str(out))
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_released_pytorch_bin_with_embedding_and_without_t2d_loads(tmp_path):
    target = tiny_target("llama")
    net = Eagle3.load_net(target, "random")
    folder = tmp_path / "released"
    folder.mkdir()
    tensors = {k: v.clone() for k, v in net.state_dict().items() if k != "t2d"}
    tensors["embed_tokens.weight"] = torch.randn(96, 32)
    torch.save(tensors, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle3"], "vocab_size": 96,
                                                    "hidden_size": 32, "draft_vocab_size": 48,
                                                    "num_hidden_layers": 1}))
    loaded = Eagle3(target, checkpoint=str(folder)).net
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_an_eagle2_checkpoint_is_refused_with_a_clear_message(tmp_path):
    target = tiny_target("llama")
    folder = tmp_path / "e2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 96,
                                                    "hidden_size": 32}))
    with pytest.raises(UserError, match="draft_vocab_size"):
        Eagle3.load_net(target, str(folder))


def test_contract_members_are_eagle3s_own():
    """EAGLE-3 fills the learned-drafter contract itself where EAGLE-2's members would misread its net."""
    from harness.learned import Accepts, LearnedDrafter
    from methods.eagle2 import Eagle2

    for member in ("build_net", "architecture", "read_checkpoint", "training_setup", "adapt_warm_start", "export"):
        assert getattr(Eagle3, member).__func__ is not getattr(Eagle2, member).__func__, member
    for member in ("load", "load_net", "warm_start", "loss_config", "default_checkpoint"):
        assert getattr(Eagle3, member).__func__ is getattr(LearnedDrafter, member).__func__, member
    assert Eagle3.accepts == Accepts()


def test_warm_start_takes_the_drafts_vocabulary_or_carries_it_into_another_and_refuses_other_drafts(tmp_path):
    from harness import checkpoint as ckpt
    from methods.eagle2 import Eagle2

    target = tiny_target("llama")
    data = layer_data(target, tmp_path / "data")
    draft = Eagle3.load_net(target, "random")                       # a random vocabulary of 48 ids
    released = Eagle3.export(draft, target, tmp_path / "released", "eagle", dtype=torch.float32)
    net, _ = Eagle3.training_setup(target, data, draft_vocab=48)    # the data's 48 most frequent ids
    net_vocab = net.target_ids().clone()
    assert not torch.equal(net.d2t, draft.d2t)
    Eagle3.warm_start(net, target, released)
    for key, value in draft.state_dict().items():
        assert torch.equal(net.state_dict()[key], value.to(net.state_dict()[key].dtype)), key
    larger, _ = Eagle3.training_setup(target, data, draft_vocab=56)  # the run's vocabulary stays, rows carried
    run_vocab = larger.target_ids().clone()
    Eagle3.warm_start(larger, target, released)
    assert torch.equal(larger.target_ids(), run_vocab)
    row_of = {token: row for row, token in enumerate(draft.target_ids().tolist())}
    for row, token in enumerate(run_vocab.tolist()):
        if token in row_of:
            assert torch.equal(larger.lm_head.weight[row], draft.lm_head.weight[row_of[token]]), token
    assert torch.equal(larger.fc.weight, draft.fc.weight)
    reranked, _ = Eagle3.training_setup(target, data, draft_vocab=48, vocab="data")  # same size, the data's ranking
    Eagle3.warm_start(reranked, target, released, draft_vocab=48, vocab="data")
    assert torch.equal(reranked.target_ids(), net_vocab) and not torch.equal(reranked.d2t, draft.d2t)
    for row, token in enumerate(net_vocab.tolist()):
        if token in row_of:
            assert torch.equal(reranked.lm_head.weight[row], draft.lm_head.weight[row_of[token]]), token
    with pytest.raises(UserError, match="vocab='target': choose one of init, data"):
        Eagle3.training_setup(target, data, vocab="target")
    eagle2 = Eagle2.training_setup(target)[0]
    ckpt.save(tmp_path / "e2", eagle2.state_dict(), {"method": "eagle2", "target": target.fingerprint(),
                                                      "architecture": Eagle2.architecture(eagle2)})
    with pytest.raises(UserError, match="'eagle2' checkpoint, not 'eagle3'"):
        Eagle3.warm_start(net, target, tmp_path / "e2")
    with pytest.raises(UserError, match="'eagle2' checkpoint, not 'eagle3'"):
        Eagle3(target, checkpoint=str(tmp_path / "e2"))


def layer_data(target, folder, with_layers: bool = True, samples: int = 12, length: int = 24) -> FeatureData:
    """Random token sequences with the tiny target's own features (and layer inputs), as one datagen shard."""
    generator = torch.Generator().manual_seed(4)
    layers = eagle3_layers(target.config.num_hidden_layers)
    rows = []
    with torch.no_grad():
        for _ in range(samples):
            ids = torch.randint(2, 96, (length,), generator=generator)
            out = target.model.model(ids[None], output_hidden_states=True)
            row = (ids, torch.arange(length) >= 4, out.last_hidden_state[0])
            fused = torch.cat([out.hidden_states[i][0] for i in layers], dim=-1).to(torch.bfloat16)
            rows.append((*row, fused) if with_layers else row)
    folder.mkdir()
    save_shard(folder / "shard_00000.safetensors", shard_tensors(rows))
    settings = {"feature_layers": ["eagle3"]} if with_layers else {}
    manifest = {"target": target.fingerprint(), "settings": settings, "shards": [{"file": "shard_00000.safetensors"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return FeatureData(folder)


def test_short_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    target = tiny_target("llama")
    data = layer_data(target, tmp_path / "data")
    assert data.collate([0, 1], "cpu").layers.shape == (2, 24, 96)
    settings = trainer.TrainConfig(epochs=8, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=3)
    out = trainer.train(Eagle3, target, data, tmp_path / "draft", settings, {"draft_vocab": 40, "steps": 3})
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    losses = [float(row["loss"]) for row in rows]
    accuracy = [float(row["acc1"]) for row in rows]
    assert len(losses) == 24 and sum(losses[-3:]) < sum(losses[:3])
    assert sum(accuracy[-3:]) > sum(accuracy[:3]) + 0.3   # top-1 agreement on training batches rises
    assert {"ce1", "ce3", "acc3"} <= set(rows[0])
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == {"draft_vocab_size": 40, "feature_layers": list(eagle3_layers(2))}
    assert config["loss"] == {"steps": 3, "step_weight": 0.8, "draft_vocab": 40, "ce_sample": 0, "head_init": "random",
                              "layers": "", "vocab": "init"}
    evals = list(csv.DictReader(open(out / "eval_log.csv")))
    assert {"top1_depth1", "top1_depth3"} <= set(evals[-1])
    drafter = Eagle3(target, checkpoint=str(out), total_tokens=10, depth=2, top_k=3)
    assert torch.equal(drafter.net.t2d, draft_vocabulary(data, 40, 96).new_zeros(96, dtype=torch.bool).index_fill(
        0, draft_vocabulary(data, 40, 96), True))
    prompt = torch.tensor([0, 5, 6, 7])
    assert run(target, drafter, prompt, 16).tokens == hf_greedy(target.model, prompt, 16)


def test_ce_sample_scales_to_the_full_loss_in_expectation(tmp_path):
    target = tiny_target("llama")
    data = layer_data(target, tmp_path / "data")
    batch = data.collate([0, 1, 2, 3], "cpu")
    full_net, full = Eagle3.training_setup(target, data, draft_vocab=40, steps=2)
    _, sampled = Eagle3.training_setup(target, data, draft_vocab=40, steps=2, ce_sample=8)
    with torch.no_grad():
        exact = float(full.loss(full_net, batch)[0])
        torch.manual_seed(0)
        estimate = sum(float(sampled.loss(full_net, batch)[0]) for _ in range(200)) / 200
    assert abs(estimate - exact) < 0.05 * exact


def test_head_init_target_starts_the_head_as_the_targets_rows(tmp_path):
    target = tiny_target("llama")
    data = layer_data(target, tmp_path / "data")
    out = torch.randn(5, target.config.hidden_size)
    with torch.no_grad():
        logits = target.model.lm_head(target.model.model.norm(out))
        started, _ = Eagle3.training_setup(target, data, draft_vocab=40, head_init="target")
        fresh, _ = Eagle3.training_setup(target, data, draft_vocab=40)
        rows = started.to_target(torch.arange(40))
        torch.testing.assert_close(started.head(out), logits[:, rows])
        assert not torch.allclose(fresh.head(out), logits[:, rows], atol=1e-3)
    with pytest.raises(UserError, match="head_init='copy': choose one of random, target"):
        Eagle3.loss_config(head_init="copy")


def test_layers_option_fuses_the_final_norm_features_in_training_and_drafting(tmp_path):
    """``--loss layers=...,N`` puts the stored final-norm features where a layer input was: training reads
    them from ``hidden``, drafting from the target's last tap, and the two are the same tensor. Lossless
    as ever; the engines cannot fuse them, so export refuses."""
    from harness.target import Target
    from harness.train.datagen import _features
    from methods._eagle3_train import gather_fused
    from tests.tiny import tiny_model

    model = tiny_model("llama", layers=8)
    target = Target(model, tokenizer=None, model_id="tiny-8", max_len=128)
    prompt, answer = [0, 7, 8, 9], [10, 11, 12]
    sample = _features(model, [answer], [prompt], eagle3_layers(8))[0]
    drafter = Eagle3(target, checkpoint="random")
    drafter.net.layers = (2, 4, 8)
    target.use_taps(tuple(i - 1 for i in drafter.net.layers))
    out = target.prefill(torch.tensor(prompt + answer))
    batch = Batch(ids=sample.ids.long()[None], hidden=sample.hidden.float()[None], loss_mask=None, valid=None,
                  layers=sample.layers.float()[None])
    fused = gather_fused(batch, (2, 4, 5), (2, 4, 8))[0]
    torch.testing.assert_close(torch.cat(out.taps, dim=-1), fused, atol=2e-2, rtol=2e-2)   # bf16 storage
    torch.testing.assert_close(fused[:, -sample.hidden.shape[-1]:], sample.hidden.float())

    tiny = tiny_target("llama")
    data = layer_data(tiny, tmp_path / "data")
    settings = trainer.TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=1, holdout=0.1, eval_depths=2)
    trained = trainer.train(Eagle3, tiny, data, tmp_path / "draft", settings, {"draft_vocab": 40, "steps": 2,
                                                                                 "layers": "0,1,2"})
    assert json.loads((trained / "config.json").read_text())["architecture"]["feature_layers"] == [0, 1, 2]
    loaded = Eagle3(tiny, checkpoint=str(trained), total_tokens=10, depth=2, top_k=3)
    assert run(tiny, loaded, PROMPT, 24).tokens == hf_greedy(tiny.model, PROMPT, 24)
    with pytest.raises(UserError, match="cannot be exported"):
        Eagle3.export(loaded.net, tiny, tmp_path / "out", "vllm")
    with pytest.raises(UserError, match="the data stores the inputs of layers 0,1,1 and the final-norm features"):
        Eagle3.training_setup(tiny, data, layers="0,3")


def test_training_refuses_data_without_layer_features(tmp_path):
    target = tiny_target("llama")
    data = layer_data(target, tmp_path / "data", with_layers=False)
    with pytest.raises(UserError, match="--feature-layers eagle3"):
        Eagle3.training_setup(target, data)


def test_max_samples_keeps_the_first_samples(tmp_path):
    target = tiny_target("llama")
    layer_data(target, tmp_path / "data")
    first = FeatureData(tmp_path / "data", max_samples=5)
    assert len(first.samples) == 5 and torch.equal(first.samples[4][0], FeatureData(tmp_path / "data").samples[4][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_shapes_keep_greedy_output(family):
    """Under --compile's fixed shapes (static mode: eager, padded) the taps come back from the padded forward."""
    target = tiny_target(family, max_len=160)
    target.compile_tree_forward("static", bucket=8)
    drafter = Eagle3(target, checkpoint="random", total_tokens=20, depth=3, top_k=4)
    assert drafter._fixed_context is not None
    assert run(target, drafter, PROMPT, 60).tokens == hf_greedy(target.model, PROMPT, 60)


def test_inference_taps_equal_the_features_datagen_stores():
    """Training reads datagen's ``hidden_layers`` (transformers' hidden_states[i], the inputs of layers 2, N//2,
    N-3); drafting reads the target's taps: the same tensors, on an 8-layer target."""
    from harness.target import Target
    from harness.train.datagen import _features
    from tests.tiny import tiny_model

    model = tiny_model("llama", layers=8)
    target = Target(model, tokenizer=None, model_id="tiny-8", max_len=128)
    drafter = Eagle3(target, checkpoint="random")
    assert drafter.net.layers == (2, 4, 5) and drafter.taps == (1, 3, 4)
    prompt, answer = [0, 7, 8, 9], [10, 11, 12]
    target.use_taps(drafter.taps)
    out = target.prefill(torch.tensor(prompt + answer))
    with torch.no_grad():
        stored = _features(model, [answer], [prompt], eagle3_layers(8))[0][3]
    torch.testing.assert_close(torch.cat(out.taps, dim=-1), stored.float(), atol=2e-2, rtol=2e-2)   # bf16 storage


def test_only_the_turn_that_needs_taps_asks_the_target_for_them():
    """EAGLE-3 shares its target with the run's other methods: vanilla's turns after an eagle3 turn must not
    compute every layer's hidden states (that would slow the speedup's denominator)."""
    from harness.drafter import METHODS
    target = tiny_target("llama", max_len=160)
    eagle3 = Eagle3(target, checkpoint="random", total_tokens=10, depth=2, top_k=3)
    vanilla = METHODS.get("vanilla")(target)
    seen, prefill = [], target.prefill

    def counting_prefill(prompt):
        out = prefill(prompt)
        seen.append(len(out.taps))
        return out

    target.prefill = counting_prefill
    for drafter in (eagle3, vanilla, eagle3):
        assert run(target, drafter, PROMPT, 8).tokens == hf_greedy(target.model, PROMPT, 8)
    assert seen == [3, 0, 3]


def test_cli_datagen_train_export_and_run(shared_data, tiny_dir, tmp_path):
    """The commands of docs/methods.md end to end on the tiny target: datagen with the layer features, train
    on the first samples, export for vLLM, and a run whose eagle3 text equals vanilla's (exit 0)."""
    from harness.cli import main
    import tests.test_runner  # noqa: F401  registers the tiny-words suite

    data, draft = tmp_path / "data", tmp_path / "draft"
    assert main(["datagen", "--target", tiny_dir, "--out", str(data), "--prompts", "gsm8k", "--max-samples", "12",
                 "--max-new-tokens", "12", "--batch-size", "4", "--data-dir", str(shared_data),
                 "--feature-layers", "eagle3"]) == 0
    assert main(["train", "--method", "eagle3", "--data", str(data), "--out", str(draft), "--target", tiny_dir,
                 "--preset", "cpu", "--set", "max_samples=10", "--set", "epochs=1", "--set", "batch_size=4",
                 "--loss", "draft_vocab=32", "--loss", "steps=2"]) == 0
    config = json.loads((draft / "config.json").read_text())
    assert config["training"]["data_samples"] == 10 and config["training"]["config"]["max_samples"] == 10
    assert main(["export", "--method", "eagle3", "--checkpoint", str(draft), "--format", "vllm",
                 "--target", tiny_dir, "--out", str(tmp_path / "vllm")]) == 0
    assert json.loads((tmp_path / "vllm" / "config.json").read_text())["draft_vocab_size"] == 32
    assert main(["run", "--methods", "eagle3", "--checkpoint", f"eagle3={draft}", "--suite", "tiny-words",
                 "--target", tiny_dir, "--max-new-tokens", "16", "--out", str(tmp_path / "run"), "--warmup", "0",
                 "--limit", "2", "--opt", "eagle3.total_tokens=12", "--opt", "eagle3.top_k=3"]) == 0


def test_carried_head_keeps_shared_rows_and_maps_new_ones_through_the_fitted_map():
    from methods.eagle3 import carried_head

    generator = torch.Generator().manual_seed(0)
    target_head = torch.randn(64, 8, generator=generator)
    to_draft = torch.randn(8, 8, generator=generator)
    ids = torch.arange(0, 40)
    head = target_head[ids] @ to_draft                      # a head exactly the target's through one map
    new_ids = torch.arange(20, 60)
    rows, shared = carried_head(head, ids, new_ids, target_head)
    assert shared == 20
    assert torch.equal(rows[:20], head[20:40])               # tokens 20..39: their trained rows
    torch.testing.assert_close(rows[20:], target_head[40:60] @ to_draft, atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="shares no token"):
        carried_head(head, ids, torch.arange(40, 64), target_head)
