"""Draft checkpoints: ``model.safetensors`` plus ``config.json`` (method, hyper-parameters, target fingerprint).

A draft larger than ``MAX_FILE_BYTES`` is written in shards (``model-00001-of-00002.safetensors`` ... and
``model.safetensors.index.json``, the layout Hugging Face models use), so every file fits this repository's
20 MB limit and committed drafts need no external storage.

Loading checks the fingerprint against the target, so a draft trained for one model is refused
for another with a message that names both, instead of producing garbage drafts.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file

from harness.errors import UserError

FINGERPRINT_KEYS = ("vocab_size", "hidden_size", "model_type")
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_FILE_BYTES = 16 * 2**20   # a shard's size, under the repository's 20 MB per file


def save(directory: Path, tensors: dict[str, torch.Tensor], config: dict, dtype: torch.dtype = torch.bfloat16) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # Integer buffers (e.g. CORAL's token order) keep their dtype; float weights are stored in ``dtype``.
    # The writer also removes the weight files of an earlier save in the folder, one file or shards.
    save_torch_state_dict({k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
                           for k, v in tensors.items()}, directory, max_shard_size=MAX_FILE_BYTES)
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def has_weights(directory: Path) -> bool:
    return (directory / WEIGHTS).is_file() or (directory / INDEX).is_file()


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, or of every shard its index names."""
    if (directory / WEIGHTS).is_file():
        return load_file(str(directory / WEIGHTS))
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values())):
        if not (directory / shard).is_file():
            raise UserError(f"{directory} is missing {shard}, one of the shards {INDEX} names")
        tensors.update(load_file(str(directory / shard)))
    return tensors


def load(directory: str | Path, method: str, fingerprint: dict,
         also: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and config of a harness checkpoint made for this method (or one in ``also``) and this target."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file() or not has_weights(directory):
        raise UserError(f"{directory} is not a draft checkpoint (needs config.json and model.safetensors, or its "
                        f"shards and {INDEX})")
    config = json.loads(config_path.read_text())
    if config.get("method") not in (method, *also):
        raise UserError(f"{directory} is a {config.get('method')!r} checkpoint, not {method!r}")
    check_fingerprint(config.get("target", {}), fingerprint, directory)
    return read_weights(directory), config


def check_fingerprint(saved: dict, actual: dict, where: Path | str) -> None:
    mismatched = [k for k in FINGERPRINT_KEYS if k in saved and saved[k] != actual.get(k)]
    if mismatched:
        detail = ", ".join(f"{k} {saved[k]} vs {actual.get(k)}" for k in mismatched)
        raise UserError(f"checkpoint {where} was made for target {saved.get('model_id', '?')!r}, which does not "
                        f"fit {actual.get('model_id')!r} ({detail})")
