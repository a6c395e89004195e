"""Targets spread over devices by a device map (accelerate), checked on CPU.

What CPU can show: a target dispatched by accelerate (hooks on every layer, ``hf_device_map`` set) gets
one KV buffer per layer instead of the joint one, runs the self-check, and gives vanilla's text with tree
drafters; ``--device-map auto`` loads through accelerate and is recorded. What it cannot show: tensors
actually crossing devices (every entry of the map is "cpu"); that needs two GPUs.
"""
import json

import torch
from accelerate import dispatch_model

from harness import selfcheck
from harness.cli import main
from harness.decode import generate
from harness.sampling import SamplingParams
from harness.target import Target
from harness.validate import build_method
from tests.tiny import NoisyTreeDrafter, hf_greedy, save_tiny_target, tiny_model

LAYER_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
             "model.layers.1": "cpu", "model.norm": "cpu", "lm_head": "cpu"}


def test_a_dispatched_target_keeps_a_cache_per_layer_and_vanilla_text():
    model = dispatch_model(tiny_model("llama"), device_map=LAYER_MAP, force_hooks=True)
    target = Target(model, tokenizer=None, model_id="tiny-llama", max_len=512)
    assert target.device_mapped and hasattr(target.model.model.layers[1], "_hf_hook")
    assert selfcheck.require(target).passed
    prompt = torch.tensor([0, 5, 6, 7, 5, 6])
    reference = hf_greedy(tiny_model("llama"), prompt, 24)
    drafters = [NoisyTreeDrafter(target), build_method("eagle2", target, "random", {}),
                build_method("pld", target, None, {})]
    for drafter in drafters:
        gen = generate(target, drafter, drafter.verifier(), prompt, max_new_tokens=24, stop_ids=frozenset({1}),
                       sampling=SamplingParams(), rng=torch.Generator())
        assert gen.tokens == reference, drafter.name
    assert target.cache.joint is None
    assert all(layer.is_initialized and not layer.in_joint for layer in target.cache.layers)


def test_device_map_auto_loads_through_accelerate_and_is_recorded(tmp_path, shared_data):
    target_dir = save_tiny_target(tmp_path / "target")
    out = tmp_path / "run"
    assert main(["run", "--methods", "pld", "--suite", "specbench", "--limit", "1", "--max-new-tokens", "8",
                 "--warmup", "0", "--target", target_dir, "--device-map", "auto", "--out", str(out),
                 "--data-dir", str(shared_data)]) == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["device_map"] == "auto"
    assert main(["run", "--methods", "pld", "--device-map", "auto", "--device", "cpu"]) == 2
