"""Greedy speculative output equals plain greedy decoding token for token (fp32 on CPU)."""
import pytest
import torch

from harness.decode import generate
from harness.drafter import METHODS
from harness.sampling import SamplingParams
from harness.verify import Verifier
from tests.tiny import FAMILIES, NoisyTreeDrafter, hf_greedy, tiny_target

PROMPTS = [torch.tensor([0, 5, 9, 5, 9, 5]), torch.tensor([0, 17, 33, 2, 40, 41, 42, 17, 33])]
STOP = frozenset({1})


def greedy(target, drafter, prompt, max_new_tokens=40):
    return generate(target, drafter, Verifier(), prompt, max_new_tokens=max_new_tokens, stop_ids=STOP,
                    sampling=SamplingParams(), rng=torch.Generator().manual_seed(0))


def default_decoder(target, method):
    """A registered method with its default options (an untrained draft for learned ones), as the runner times it."""
    cls = METHODS.get(method)
    return cls(target, checkpoint="random" if cls.needs_checkpoint else None).turn_decoder()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_is_lossless_by_default_and_matches_plain_greedy(family, method):
    target = tiny_target(family)
    decoder = default_decoder(target, method)
    assert decoder.lossless and decoder.method.name == method
    for prompt in PROMPTS:
        gen = decoder.decode_turn(prompt, max_new_tokens=40, stop_ids=STOP, sampling=SamplingParams(),
                                  rng=torch.Generator().manual_seed(0))
        assert gen.tokens == hf_greedy(target.model, prompt, 40)
        assert sum(gen.accept_lengths) == len(gen.tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_trees_match_plain_greedy_and_accept_more_than_one_token(family):
    target = tiny_target(family)
    drafter = NoisyTreeDrafter(target, depth=3, top_k=2, noise=0.3)
    for prompt in PROMPTS:
        gen = greedy(target, drafter, prompt)
        assert gen.tokens == hf_greedy(target.model, prompt, 40)
        assert max(gen.accept_lengths) > 1, "the test trees should get some drafts accepted"


def test_pld_accepts_drafts_on_repetitive_text():
    target = tiny_target("llama")
    gen = greedy(target, METHODS.get("pld")(target), PROMPTS[0], max_new_tokens=60)
    assert len(gen.tokens) / len(gen.accept_lengths) > 1.0
