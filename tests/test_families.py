"""Lossless on every family: tree logits equal the model's own forward with prompts longer than the window,
greedy speculative text equals plain greedy, unsupported families are refused, and every target passes the
load-time self-check (or is refused with the measured difference)."""
import pytest
import torch
import transformers as hf

from harness.attention_layout import AttentionLayout
from harness.drafter import METHODS
from harness.errors import UserError
from harness.sampling import SamplingParams
from harness.selfcheck import measure, require
from harness.target import Target
from harness.tree import DraftTree
from tests.families import CASES, CONFIGS, WINDOW, family_model, family_target
from tests.test_lossless import STOP, default_decoder, greedy
from tests.tiny import NoisyTreeDrafter, hf_greedy

TREE = DraftTree(torch.tensor([5, 6, 7, 8, 9, 10, 11]), torch.tensor([-1, 0, 0, 1, 1, 3, 5]))
PROMPT = torch.randint(2, 96, (5 * WINDOW,), generator=torch.Generator().manual_seed(3))


def worst_path_difference(target: Target, prompt: torch.Tensor = PROMPT) -> float:
    """Max |tree logit - full-recomputation logit| over every root-to-leaf path of TREE."""
    target.prefill(prompt)
    out = target.score_tree(TREE)
    worst = 0.0
    for row in TREE.paths.tolist():
        nodes = [n for n in row if n >= 0]
        with torch.no_grad():
            reference = target.model(torch.cat([prompt, TREE.tokens[nodes]])[None]).logits[0, len(prompt):]
        worst = max(worst, float((out.logits[nodes] - reference).abs().max()))
    return worst


@pytest.mark.parametrize("compile_mode", ["off", "static"])
@pytest.mark.parametrize("family,attention", CASES)
def test_tree_logits_equal_full_recomputation_past_the_window(family, attention, compile_mode):
    target = family_target(family, attention)
    target.compile_tree_forward(compile_mode, bucket=16)
    assert worst_path_difference(target) < 1e-4


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_prefix_mask_that_ignores_the_window_is_caught(attention):
    """The bug this layout fixes (Gemma 3, window 4, a 20-token prompt): without the window the tree logits
    are far off, so the test above can fail."""
    target = family_target("gemma3", attention)
    target.layout = AttentionLayout({"full_attention": None, "sliding_attention": None}, per_type=True)
    assert worst_path_difference(target) > 1e-2


@pytest.mark.parametrize("family", ["gemma3", "mistral", "qwen2-sliding", "gpt-oss", "cohere2"])
def test_greedy_speculative_text_equals_plain_greedy_on_windowed_families(family):
    target = family_target(family)
    prompt = torch.cat([torch.tensor([0]), PROMPT])
    reference = hf_greedy(target.model, prompt, 30)
    drafters = [NoisyTreeDrafter(target, depth=3, top_k=2, noise=0.3), METHODS.get("pld")(target),
                METHODS.get("eagle2")(target, checkpoint="random"), METHODS.get("medusa")(target, checkpoint="random")]
    for drafter in drafters:
        gen = greedy(target, drafter, prompt, max_new_tokens=30)
        assert gen.tokens == reference, drafter.name
    assert max(greedy(target, drafters[0], prompt, 30).accept_lengths) > 1


@pytest.mark.parametrize("family,attention", [c for c in CASES if c[1] == "eager"])
def test_self_check_passes_on_every_served_family(family, attention):
    result = require(family_target(family, attention))
    assert result.passed and result.prompt_tokens > WINDOW and result.tree_nodes > 1


def test_self_check_refuses_a_target_whose_tree_masks_are_wrong():
    target = family_target("gemma3")
    target.layout = AttentionLayout({"full_attention": None, "sliding_attention": None}, per_type=True)
    assert not measure(target).passed
    with pytest.raises(UserError, match=r"tree forward differs from the model's own forward by \d\.\d+e"):
        require(target)


def test_self_check_refuses_a_logit_rule_the_target_does_not_apply():
    target = family_target("cohere2")
    target.logit_scale = 1.0          # Cohere's head multiplies by config.logit_scale
    assert target.config.logit_scale != 1.0
    with pytest.raises(UserError, match="failed the lossless self-check"):
        require(target)


def test_self_check_leaves_the_cache_empty():
    target = family_target("llama")
    measure(target)
    assert target.length == 0


@pytest.mark.parametrize("config,reason", [
    (lambda: hf.MambaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2), "recurrent"),
    (lambda: hf.Qwen2Config(**{**CONFIGS["qwen2"]().to_dict(), "layer_types": ["linear_attention"] * 2}),
     "linear_attention"),
])
def test_families_the_verifier_cannot_serve_are_refused_at_load(config, reason):
    with pytest.raises(UserError, match=reason):
        AttentionLayout.of(config())


def test_windows_follow_the_config():
    assert AttentionLayout.of(CONFIGS["llama"]()).windowed is False
    assert AttentionLayout.of(CONFIGS["mistral"]()).windows == {"sliding_attention": WINDOW}
    gemma = AttentionLayout.of(CONFIGS["gemma3"]())
    assert gemma.per_type and gemma.windows == {"sliding_attention": WINDOW, "full_attention": None}
    assert AttentionLayout.of(CONFIGS["qwen2"]()).windowed is False   # use_sliding_window off


def test_logit_rules_of_the_head_are_applied():
    for family in ("cohere2", "gemma2"):
        model = family_model(family)
        target = Target(model, tokenizer=None, model_id=family)
        out = target.prefill(PROMPT)
        with torch.no_grad():
            torch.testing.assert_close(out.logits[0], model(PROMPT[None]).logits[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_lossless_method_matches_plain_greedy_on_gemma3(method):
    """Gemma 3 alternates sliding and full layers and has a rotary embedding per layer type: every method
    (EAGLE-family layers built from the target's own layer class included) must run on it and stay exact."""
    target = family_target("gemma3")
    prompt = torch.cat([torch.tensor([0]), PROMPT])
    decoder = default_decoder(target, method)
    gen = decoder.decode_turn(prompt, max_new_tokens=24, stop_ids=STOP, sampling=SamplingParams(),
                              rng=torch.Generator().manual_seed(0))
    assert decoder.lossless and gen.tokens == hf_greedy(target.model, prompt, 24)
