"""EAGLE-2: tree expansion equals sequential drafting, the state carried across steps equals a fresh
recomputation, checkpoints round-trip, training runs end to end."""
import pytest
import torch
from safetensors.torch import load_file

from harness.decode import generate
from harness.drafter import METHODS
from harness.errors import UserError
from harness.sampling import SamplingParams
from harness.verify import Verdict, Verifier
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


class RandomPathVerifier(Verifier):
    """Accepts the path to a random node of each tree and draws a random bonus, whatever the target says: steps
    that keep several drafts, and often a branch short of its leaf. Untrained drafts rarely get a second token
    past the exact verifier, and greedy equality cannot see a drafter's state anyway (the verifier hides it)."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab, self.generator = vocab, torch.Generator().manual_seed(seed)

    def verify(self, tree, logits, sampling, rng) -> Verdict:
        node = int(torch.randint(tree.size, (1,), generator=self.generator))
        path = tree.ancestor_mask[node].nonzero().flatten()
        bonus = int(torch.randint(2, self.vocab, (1,), generator=self.generator))
        return Verdict(path=path, bonus=bonus, accepted=len(path) - 1)


@pytest.mark.parametrize("method, compile_mode", [("eagle2", "off"), ("eagle2", "static"), ("fspad", "off"),
                                                  ("coral", "off")])
def test_the_state_carried_across_steps_equals_a_fresh_recomputation(method, compile_mode):
    """Each step's context pass (the draft cache, its positions and the target features queued by accept())
    must give, at the root, what the draft computes from scratch over the whole committed sequence."""
    target = tiny_target("llama")
    target.compile_tree_forward(compile_mode, bucket=16)
    drafter = METHODS.get(method)(target, checkpoint="random", total_tokens=12, depth=3, top_k=3)
    seen, context_pass = [], drafter.context_pass
    drafter.context_pass = lambda tokens, features: seen.append(
        (context_pass(tokens, features), drafter.stable + len(tokens))) or seen[-1][0]
    prompt = torch.tensor([0, 17, 33, 2, 40, 41, 42, 17, 33])
    gen = generate(target, drafter, RandomPathVerifier(target.vocab_size), prompt, max_new_tokens=40,
                   stop_ids=frozenset(), sampling=SamplingParams(), rng=torch.Generator())
    assert max(gen.accept_lengths) >= 3 and len(set(gen.accept_lengths)) >= 3, "steps should keep varied paths"
    emitted = 0
    for step, (root_out, stable) in enumerate(seen):
        emitted += gen.accept_lengths[step]          # the last of these is the root being drafted from
        committed = torch.cat([prompt, torch.tensor(gen.tokens[: emitted - 1], dtype=torch.long)])
        tokens = torch.cat([committed[1:], torch.tensor(gen.tokens[emitted - 1: emitted])])
        n = len(committed)
        with torch.no_grad():
            features = target.model.get_decoder()(input_ids=committed[None]).last_hidden_state
            fresh = drafter.net(target.embed(tokens)[None], features, torch.arange(n)[None],
                                causal_mask(n, 0, torch.float32, "cpu"))[0, -1]
        assert stable == n, f"step {step}: the draft's positions drifted"
        torch.testing.assert_close(root_out, fresh, atol=1e-4, rtol=1e-4, msg=lambda m: f"step {step}: {m}")


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
