"""EAGLE-layout checkpoints: read released EAGLE / EAGLE-2 / HASS drafts, write ours for EAGLE, vLLM, SGLang.

Released layout (REFERENCE §1.3.5): ``config.json`` is a one-layer LlamaConfig; weights in
``pytorch_model.bin`` or ``model.safetensors`` with keys ``embed_tokens.weight``, ``fc.weight``,
``fc.bias`` (if the draft has one), ``layers.0.self_attn.*``, ``layers.0.mlp.*`` and
``layers.0.post_attention_layernorm.weight``; no LM head, no input norm, no final norm. Export
(§1.3.6) writes that layout with the target's embedding and zeros for a missing ``fc.bias`` (harmless
for vLLM, required by SGLang); SGLang wants the architecture name ``LlamaForCausalLMEagle``.
Harness checkpoints (harness/checkpoint.py) carry neither the embedding nor the head.
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


def read_checkpoint(directory: Path, method: str, fingerprint: dict,
                    also: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (EAGLE key names, no embedding) and a harness config, from either checkpoint layout;
    ``also`` names other methods whose harness checkpoints are accepted (warm starts)."""
    if not is_released_layout(directory):
        return ckpt.load(directory, method, fingerprint, also)
    config = json.loads((directory / "config.json").read_text())
    if (directory / "model.safetensors").is_file():
        tensors = load_file(str(directory / "model.safetensors"))
    elif (directory / "pytorch_model.bin").is_file():
        tensors = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{directory} has config.json but neither model.safetensors nor pytorch_model.bin")
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


def export(tensors: dict[str, torch.Tensor], target, out: Path, flavor: str = "eagle",
           dtype: torch.dtype = torch.float16) -> Path:
    """Write a draft in the released EAGLE layout for the EAGLE repo, vLLM or SGLang."""
    if flavor not in ARCHITECTURES:
        raise UserError(f"unknown export format {flavor!r} (known: {', '.join(ARCHITECTURES)})")
    if target.config.model_type not in ("llama", "mistral", "qwen2"):
        raise UserError(f"EAGLE-layout export covers Llama-style targets, not {target.config.model_type!r}")
    weights = dict(tensors)
    weights.setdefault("fc.bias", torch.zeros(weights["fc.weight"].shape[0]))
    weights["embed_tokens.weight"] = target.embed.weight
    config = target.config.to_dict()
    config.pop("quantization_config", None)
    dtype_name = str(dtype).removeprefix("torch.")
    config.update(num_hidden_layers=1, architectures=[ARCHITECTURES[flavor]], bias=True,
                  torch_dtype=dtype_name, dtype=dtype_name)
    if target.config.model_type == "qwen2":
        config["qkv_bias"] = True
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(dtype).contiguous().cpu() for k, v in weights.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
