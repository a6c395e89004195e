"""EAGLE-2: tree expansion equals sequential drafting, checkpoints round-trip, training runs end to end."""
import pytest
import torch
from safetensors.torch import load_file

from harness.drafter import METHODS
from harness.errors import UserError
from harness.sampling import SamplingParams
from methods import _eagle_io as eagle_io
from methods.eagle2 import Eagle2, causal_mask
from tests.tiny import tiny_target


def sequential_logprob(drafter: Eagle2, prompt_features, prompt_tokens, root: int, path: list[int]) -> float:
    """Cumulative draft log-probability of path below root, recomputed without cache or tree masks
    (the net's split: what the LM head reads, and what the next level is fed)."""
    features, tokens, total = list(prompt_features), list(prompt_tokens) + [root], 0.0
    for token in path:
        n = len(tokens)
        out = drafter.net(drafter.target.embed(torch.tensor(tokens))[None], torch.stack(features)[None],
                          torch.arange(n)[None], causal_mask(n, 0, torch.float32, "cpu"))[0]
        for_head, for_next = drafter.net.split(out[-1:])
        total += float(torch.log_softmax(drafter.target.lm_head(for_head), dim=-1)[0, token])
        features.append(for_next[0])
        tokens.append(token)
    return total


@pytest.mark.parametrize("method", ["eagle2", "hass", "fspad", "fspad-fs-only", "fspad-pad-only"])
def test_tree_expansion_scores_equal_sequential_drafting(method):
    target = tiny_target("llama")
    drafter = METHODS.get(method)(target, checkpoint="random", total_tokens=25, depth=3, top_k=3)
    prompt = torch.tensor([0, 7, 8, 9, 7, 8])
    out = target.prefill(prompt)
    drafter.start(prompt, out, SamplingParams())
    captured = {}
    real_select = drafter.select
    drafter.select = lambda *args: captured.update(args=args) or real_select(*args)
    with torch.no_grad():
        tree = drafter.propose(torch.tensor(5))
        _, tokens, scores, parents = (a.tolist() if torch.is_tensor(a) else a for a in captured["args"])
        for node in range(0, len(tokens), 7):  # a spread of recorded nodes over all levels
            path, walk = [], node
            while walk >= 0:
                path.insert(0, tokens[walk])
                walk = parents[walk]
            expected = sequential_logprob(drafter, out.hidden, prompt[1:].tolist(), 5, path)
            assert abs(scores[node] - expected) < 1e-4
    assert tree.size == 25 and int(tree.depth.max()) <= 4
    assert drafter.cache.layers[0].length == len(prompt)   # expansion entries were dropped


def test_export_import_round_trip_keeps_every_weight(tmp_path):
    target = tiny_target("llama")
    net = Eagle2.load_net(target, "random")
    tensors = {k: v.clone() for k, v in net.state_dict().items()}
    for flavor in ("eagle", "sglang"):
        out = eagle_io.export(tensors, target, tmp_path / flavor, flavor=flavor, dtype=torch.float32)
        saved = load_file(str(out / "model.safetensors"))
        assert "embed_tokens.weight" in saved and "lm_head.weight" not in saved
        assert not any("input_layernorm" in k for k in saved)
        loaded = Eagle2.load_net(target, str(out))
        for key, value in tensors.items():
            torch.testing.assert_close(loaded.state_dict()[key], value)
    assert '"LlamaForCausalLMEagle"' in (tmp_path / "sglang" / "config.json").read_text()


def test_released_pytorch_bin_layout_loads(tmp_path):
    target = tiny_target("llama")
    tensors = {k: v.clone() for k, v in Eagle2.load_net(target, "random").state_dict().items()}
    eagle_io.export(tensors, target, tmp_path / "x", dtype=torch.float32)
    saved = load_file(str(tmp_path / "x" / "model.safetensors"))
    (tmp_path / "x" / "model.safetensors").unlink()
    torch.save(saved, tmp_path / "x" / "pytorch_model.bin")
    loaded = Eagle2.load_net(target, str(tmp_path / "x"))
    torch.testing.assert_close(loaded.state_dict()["fc.weight"], tensors["fc.weight"])


def test_a_checkpoint_for_another_target_is_refused(tmp_path):
    small, other = tiny_target("llama", vocab=96), tiny_target("llama", vocab=128)
    tensors = dict(Eagle2.load_net(small, "random").state_dict())
    eagle_io.export(tensors, small, tmp_path / "draft", dtype=torch.float32)
    with pytest.raises(UserError, match="vocab_size 96 vs 128"):
        Eagle2(other, checkpoint=str(tmp_path / "draft"))


def test_a_missing_checkpoint_says_how_to_get_one():
    with pytest.raises(UserError, match="python -m harness train --method eagle2"):
        Eagle2(tiny_target("llama"), checkpoint="/no/such/dir")
