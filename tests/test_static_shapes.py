"""Fixed-shape tree forwards (padding, attention window, torch.compile) give the eager path's outputs."""
import pytest
import torch

from harness import static_shapes
from harness.drafter import METHODS
from harness.errors import UserError
from harness.tree import DraftTree
from tests.test_lossless import PROMPTS, greedy
from tests.tiny import FAMILIES, NoisyTreeDrafter, hf_greedy, tiny_target

TREE = DraftTree(torch.tensor([5, 6, 7, 8, 9, 10]), torch.tensor([-1, 0, 0, 1, 1, 3]))


def test_padded_inputs_mask_the_padding_and_the_unused_window():
    step = static_shapes.tree_step(TREE, length=5, bucket=4, max_len=64, device=torch.device("cpu"))
    assert step.ids.shape == (1, 8) and step.mask.shape == (1, 1, 8, 16) and step.nodes == 6
    assert step.write_at.tolist() == list(range(5, 13))
    allowed = step.mask[0, 0]
    assert allowed[:6, :5].all() and torch.equal(allowed[:6, 5:11], TREE.ancestor_mask)
    assert not allowed[:, 13:].any(), "slots past the padded tree are never attended"
    assert allowed[6:].sum(-1).tolist() == [1, 1] and allowed[6, 11] and allowed[7, 12], "padding sees itself only"
    assert step.positions[0, :6].tolist() == (TREE.depth + 5).tolist()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_shape_scores_equal_eager_scores(family, attention):
    prompt = torch.tensor([0, 11, 12, 13, 14])
    eager, fixed = tiny_target(family, attention=attention), tiny_target(family, attention=attention)
    fixed.compile_tree_forward("static", bucket=4)
    for target in (eager, fixed):
        target.prefill(prompt)
    reference, out = eager.score_tree(TREE), fixed.score_tree(TREE)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.hidden, reference.hidden, atol=1e-5, rtol=1e-5)
    path = torch.tensor([0, 1, 3, 5])
    for target in (eager, fixed):
        target.commit(path)
    for mine, theirs in zip(fixed.cache.layers, eager.cache.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decoding_with_fixed_shapes_matches_plain_greedy_across_windows(family):
    target = tiny_target(family, max_len=160)   # eagle2 scores 60 nodes: room for them after 60 new tokens
    target.compile_tree_forward("static", bucket=8)
    drafters = [METHODS.get("vanilla")(target), NoisyTreeDrafter(target, depth=3, top_k=2, noise=0.3)]
    drafters += [METHODS.get(name)(target, checkpoint="random") for name in ("eagle2", "fspad", "coral")]
    assert drafters[-1]._fixed_context is not None, "EAGLE-family drafters follow the target into fixed shapes"
    for drafter in drafters:
        gen = greedy(target, drafter, PROMPTS[1], max_new_tokens=60)
        assert gen.tokens == hf_greedy(target.model, PROMPTS[1], 60), drafter.name


def test_a_padded_tree_that_would_overflow_the_cache_falls_back_to_the_exact_shape():
    prompt = torch.tensor([0, 11, 12, 13, 14])
    target = tiny_target("llama", max_len=len(prompt) + TREE.size)   # room for 6 nodes, not for 8
    target.compile_tree_forward("static", bucket=4)
    target.prefill(prompt)
    reference = tiny_target("llama")
    reference.prefill(prompt)
    torch.testing.assert_close(target.score_tree(TREE).logits, reference.score_tree(TREE).logits)


def test_warm_up_leaves_an_empty_cache_and_the_output_unchanged():
    target = tiny_target("llama", max_len=96)
    target.compile_tree_forward("static", bucket=8)
    target.warm_up_fixed_shapes({1, 7})
    assert target.length == 0
    gen = greedy(target, NoisyTreeDrafter(target, depth=3, top_k=2, noise=0.3), PROMPTS[0])
    assert gen.tokens == hf_greedy(target.model, PROMPTS[0], 40)


def test_unknown_compile_mode_is_a_user_error():
    with pytest.raises(UserError, match="unknown compile mode"):
        tiny_target("llama").compile_tree_forward("fastest")


def test_torch_compile_is_lossless_without_graph_breaks():
    """The real compiler (inductor on CPU; CUDA graphs need a GPU): a static and a dynamic-shape graph per
    tree size and for EAGLE-2's tree level and context pass, no graph break, greedy output unchanged."""
    import shutil

    from torch._dynamo.utils import counters

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    torch._dynamo.reset()
    counters.clear()
    target = tiny_target("llama", max_len=96)
    target.compile_tree_forward("default", bucket=8)
    eagle = METHODS.get("eagle2")(target, checkpoint="random", total_tokens=8, depth=2, top_k=3)
    for drafter in (METHODS.get("vanilla")(target), NoisyTreeDrafter(target, depth=2, top_k=2, noise=0.3), eagle):
        gen = greedy(target, drafter, PROMPTS[1], max_new_tokens=50)
        assert gen.tokens == hf_greedy(target.model, PROMPTS[1], 50), drafter.name
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 12


def test_a_long_prompt_pass_runs_eagerly_and_the_rest_in_fixed_shapes():
    from methods.eagle2 import FIXED_CONTEXT_MAX

    prompt = torch.arange(2, FIXED_CONTEXT_MAX + 12)   # longer than any fixed-shape context pass
    target = tiny_target("qwen2", max_len=200)
    target.compile_tree_forward("static", bucket=16)
    gen = greedy(target, METHODS.get("eagle2")(target, checkpoint="random"), prompt, max_new_tokens=40)
    assert gen.tokens == hf_greedy(target.model, prompt, 40)
