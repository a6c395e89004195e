"""Target: tree forwards equal sequential decoding, and commit leaves the cache a fresh prefill would."""
import pytest
import torch

from harness.target import ContextFull
from harness.tree import DraftTree
from tests.tiny import FAMILIES, tiny_target

TREE = DraftTree(torch.tensor([5, 6, 7, 8, 9, 10]), torch.tensor([-1, 0, 0, 1, 1, 3]))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tree_logits_equal_sequential_decoding_along_every_path(family, attention):
    target = tiny_target(family, attention=attention)
    prompt = torch.tensor([0, 11, 12, 13, 14])
    target.prefill(prompt)
    out = target.score_tree(TREE)
    for row in TREE.paths.tolist():
        nodes = [n for n in row if n >= 0]
        sequence = torch.cat([prompt, TREE.tokens[nodes]]).unsqueeze(0)
        with torch.no_grad():
            reference = target.model(sequence).logits[0, len(prompt):]
        torch.testing.assert_close(out.logits[nodes], reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_commit_leaves_the_cache_of_a_fresh_prefill(family):
    target = tiny_target(family)
    prompt = torch.tensor([0, 11, 12, 13, 14])
    target.prefill(prompt)
    target.score_tree(TREE)
    path = torch.tensor([0, 1, 3, 5])
    target.commit(path)
    assert target.length == len(prompt) + 4
    kept = [layer.keys.clone() for layer in target.cache.layers], [layer.values.clone() for layer in target.cache.layers]

    fresh = tiny_target(family)
    fresh.prefill(torch.cat([prompt, TREE.tokens[path]]))
    for mine, theirs in zip(kept[0] + kept[1], [l.keys for l in fresh.cache.layers] + [l.values for l in fresh.cache.layers]):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_hidden_states_are_the_lm_head_input_and_taps_return_layers():
    target = tiny_target("llama")
    target.tap_layers = (0,)
    out = target.prefill(torch.tensor([0, 3, 4]))
    torch.testing.assert_close(target.lm_head(out.hidden[-1:]), out.logits)
    assert out.hidden.shape == (3, 32) and len(out.taps) == 1 and out.taps[0].shape == (3, 32)


def test_a_tree_that_does_not_fit_raises_context_full():
    target = tiny_target("llama", max_len=8)
    target.prefill(torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ContextFull):
        target.score_tree(TREE)


def test_layers_share_one_buffer_and_a_layer_of_another_shape_gets_its_own():
    from harness.kvcache import SlotCache

    target = tiny_target("llama")
    target.prefill(torch.tensor([0, 11, 12]))
    assert target.cache.joint is not None and all(layer.in_joint for layer in target.cache.layers)

    cache = SlotCache(2, max_len=8)
    first, second = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 6)   # layer 1 has a wider head
    cache.layers[0].update(first, first)
    cache.layers[1].update(second, second)
    assert cache.layers[0].in_joint and not cache.layers[1].in_joint
    cache.keep(0, torch.tensor([0, 2]))
    torch.testing.assert_close(cache.layers[0].keys, first[:, :, [0, 2]])
    torch.testing.assert_close(cache.layers[1].keys, second[:, :, [0, 2]])
