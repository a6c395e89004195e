"""Tiny random configs of the model families the field targets, windows shorter than the test prompts.

Each builds on CPU in fp32 with random weights; ``ATTENTION`` lists the attention kernels the family
offers (Gemma 2 and gpt-oss have no SDPA path in transformers).
"""
from __future__ import annotations

import torch
import transformers as hf

from harness.target import Target

WINDOW = 4
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=0,
              eos_token_id=1, pad_token_id=1)
ALTERNATING = ["sliding_attention", "full_attention"]
MOE = dict(num_experts_per_tok=2)

CONFIGS = {
    "llama": lambda: hf.LlamaConfig(**COMMON),
    "qwen2": lambda: hf.Qwen2Config(**COMMON),
    "qwen2-sliding": lambda: hf.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW,
                                            max_window_layers=1),
    "qwen3": lambda: hf.Qwen3Config(**COMMON, head_dim=8),
    "mistral": lambda: hf.MistralConfig(**COMMON, sliding_window=WINDOW),
    "gemma2": lambda: hf.Gemma2Config(**COMMON, head_dim=8, sliding_window=WINDOW),   # attention + final soft-capping
    "gemma3": lambda: hf.Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=WINDOW, layer_types=ALTERNATING),
    "phi3": lambda: hf.Phi3Config(**COMMON, sliding_window=WINDOW),
    "mixtral": lambda: hf.MixtralConfig(**COMMON, **MOE, num_local_experts=4, sliding_window=WINDOW),
    "qwen3-moe": lambda: hf.Qwen3MoeConfig(**COMMON, **MOE, head_dim=8, num_experts=4, moe_intermediate_size=32,
                                           use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "olmoe": lambda: hf.OlmoeConfig(**COMMON, **MOE, num_experts=4),
    "gpt-oss": lambda: hf.GptOssConfig(**COMMON, **MOE, head_dim=8, num_local_experts=4, sliding_window=WINDOW,
                                       layer_types=ALTERNATING),   # attention sinks too
    "cohere2": lambda: hf.Cohere2Config(**COMMON, head_dim=8, sliding_window=WINDOW, layer_types=ALTERNATING),
}
NO_SDPA = {"gemma2", "gpt-oss"}
ATTENTION = {name: ("eager",) if name in NO_SDPA else ("sdpa", "eager") for name in CONFIGS}
CASES = [(name, attention) for name in CONFIGS for attention in ATTENTION[name]]


def family_model(name: str, attention: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    model = hf.AutoModelForCausalLM.from_config(CONFIGS[name](), dtype=torch.float32,
                                                attn_implementation=attention).eval()
    with torch.no_grad():  # sharper logits than the default init, so greedy text is not all ties
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def family_target(name: str, attention: str = "eager", seed: int = 0) -> Target:
    return Target(family_model(name, attention, seed), tokenizer=None, model_id=f"tiny-{name}", max_len=512)
