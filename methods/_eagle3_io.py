"""The released EAGLE-3 checkpoint layout: import it, and export ours in it for the EAGLE repo, vLLM and SGLang.

Layout (SafeAILab/EAGLE@cb7e084 ``eagle/model/cnets.py`` ``Model``; docs/reference.md §1.8-1.9): ``config.json``, a
one-layer LlamaConfig with ``draft_vocab_size``; weights in ``model.safetensors`` or ``pytorch_model.bin``
with keys ``fc.weight`` [H, 3H], ``midlayer.self_attn.{q,k,v}_proj.weight`` [*, 2H],
``midlayer.self_attn.o_proj.weight``, ``midlayer.mlp.{gate,up,down}_proj.weight``,
``midlayer.{hidden_norm,input_layernorm,post_attention_layernorm}.weight``, ``norm.weight``,
``lm_head.weight`` [V_d, H], ``d2t`` [V_d] int64 offsets and ``t2d`` [V] bool; an ``embed_tokens.weight``
(the target's, which the EAGLE repo loads from the base model) is accepted and dropped. These are the
harness's own parameter names (methods/eagle3.py), so no renaming is needed either way.

The engines read the same files (docs/engines.md):

- vLLM ``vllm/model_executor/models/llama_eagle3.py``: architecture ``LlamaForCausalLMEagle3`` (or
  ``Eagle3LlamaForCausalLM``); ``midlayer.`` becomes ``layers.0.``, ``d2t`` becomes
  ``draft_id_to_target_id``, ``t2d`` is skipped; q/k/v read 2H; fc has no bias; the embedding is the
  target's when the draft has none; ``attention_bias`` / ``bias`` in the config would add attention biases
  the draft lacks, so neither is written; ``eagle_aux_hidden_state_layer_ids`` says which layer inputs to fuse.
- SGLang ``python/sglang/srt/models/llama_eagle3.py``: ``LlamaForCausalLMEagle3``; ``d2t`` becomes the
  hot-token map; fc's bias follows the config's ``bias`` (absent: none); ``tie_word_embeddings`` true would
  make the draft head the embedding, so it is written false.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from harness import checkpoint as ckpt
from harness.errors import UserError
from harness.train.datagen import eagle3_layers
from methods._eagle_io import is_released_layout, read_released_files

ARCHITECTURE = "LlamaForCausalLMEagle3"
FORMATS = ("eagle", "vllm", "sglang")   # one layout serves all three
LAYER_IDS_KEY = "eagle_aux_hidden_state_layer_ids"   # vLLM: inputs of these target layers are fused
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def read_checkpoint(directory: Path, method: str, fingerprint: dict, target_config,
                    also: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (harness key names, no embedding) and a harness config, from a harness checkpoint of ``method``
    (or of a method in ``also``) or a released EAGLE-3 folder."""
    if is_released_layout(directory):
        return read_released(directory, fingerprint, target_config)
    return ckpt.load(directory, method, fingerprint, also)


def read_released(directory: Path, fingerprint: dict, target_config) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors under harness names and a harness config (architecture: draft vocabulary, fused layers)."""
    if "draft_vocab_size" not in json.loads((directory / "config.json").read_text()):
        raise UserError(f"{directory} has no draft_vocab_size in config.json: not an EAGLE-3 checkpoint "
                        f"(EAGLE-2 / HASS drafts load with --methods eagle2 or hass)")
    config, tensors = read_released_files(directory)
    saved = {"model_id": config.get("_name_or_path") or str(directory), "vocab_size": config.get("vocab_size"),
             "hidden_size": config.get("hidden_size")}
    ckpt.check_fingerprint(saved, fingerprint, directory)
    for key in SHAPE_KEYS:
        theirs, ours = config.get(key), getattr(target_config, key, None)
        if theirs is not None and theirs != ours and not (key == "num_key_value_heads" and ours is None):
            raise UserError(f"{directory}: {key} {theirs} differs from the target's {ours}; the harness builds "
                            f"the EAGLE-3 layer with the target's sizes")
    if "target_hidden_size" in config and config["target_hidden_size"] != fingerprint["hidden_size"]:
        raise UserError(f"{directory}: target_hidden_size {config['target_hidden_size']} does not fit the target")
    tensors.pop("embed_tokens.weight", None)
    if "t2d" not in tensors and "d2t" in tensors:   # some exports carry d2t only: t2d follows from it
        t2d = torch.zeros(fingerprint["vocab_size"], dtype=torch.bool)
        t2d[torch.arange(tensors["d2t"].shape[0]) + tensors["d2t"].long()] = True
        tensors["t2d"] = t2d
    layers = config.get(LAYER_IDS_KEY) or eagle3_layers(fingerprint["num_layers"])
    harness_config = {"method": "eagle3", "target": {**fingerprint, "model_id": saved["model_id"]},
                      "architecture": {"draft_vocab_size": int(config["draft_vocab_size"]),
                                       "feature_layers": [int(i) for i in layers]},
                      "imported_from": str(directory)}
    return {k: v.long() if k == "d2t" else v.bool() if k == "t2d" else v for k, v in tensors.items()}, harness_config


def export(net, target, out: Path, flavor: str = "eagle", dtype: torch.dtype = torch.float16) -> Path:
    """Write ``net`` (an Eagle3Net) in the released EAGLE-3 layout."""
    if flavor not in FORMATS:
        raise UserError(f"unknown export format {flavor!r} (known: {', '.join(FORMATS)})")
    if target.config.num_hidden_layers in net.layers:
        raise UserError(f"this draft fuses the final-norm features (layer {target.config.num_hidden_layers}, "
                        f"--loss layers): the engines fuse decoder-layer inputs only, so it cannot be exported")
    weights = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in net.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(draft_config(net, target, dtype), indent=2))
    return out


def draft_config(net, target, dtype: torch.dtype) -> dict:
    """The draft layer's LlamaConfig with the target's vocabulary, token ids and the EAGLE-3 keys."""
    config = net.config.to_dict()
    for key in ("bias", "qkv_bias", "layer_types", "sliding_window", "use_sliding_window", "_attn_implementation"):
        config.pop(key, None)
    rope = config.get("rope_parameters") or {}
    dtype_name = str(dtype).removeprefix("torch.")
    config.update(architectures=[ARCHITECTURE], model_type="llama", num_hidden_layers=1, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, draft_vocab_size=net.draft_vocab_size,
                  vocab_size=target.vocab_size, torch_dtype=dtype_name, dtype=dtype_name,
                  **{LAYER_IDS_KEY: list(net.layers)},
                  **({"rope_theta": rope["rope_theta"]} if "rope_theta" in rope else {}))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config[key] = getattr(target.config, key, None)
    return config
