"""Draft checkpoints: ``model.safetensors`` plus ``config.json`` (method, hyper-parameters, target fingerprint).

Loading checks the fingerprint against the target, so a draft trained for one model is refused
for another with a message that names both, instead of producing garbage drafts.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.errors import UserError

FINGERPRINT_KEYS = ("vocab_size", "hidden_size", "model_type")


def save(directory: Path, tensors: dict[str, torch.Tensor], config: dict, dtype: torch.dtype = torch.bfloat16) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # Integer buffers (e.g. CORAL's token order) keep their dtype; float weights are stored in ``dtype``.
    save_file({k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in tensors.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def load(directory: str | Path, method: str, fingerprint: dict,
         also: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and config of a harness checkpoint made for this method (or one in ``also``) and this target."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file() or not (directory / "model.safetensors").is_file():
        raise UserError(f"{directory} is not a draft checkpoint (needs config.json and model.safetensors)")
    config = json.loads(config_path.read_text())
    if config.get("method") not in (method, *also):
        raise UserError(f"{directory} is a {config.get('method')!r} checkpoint, not {method!r}")
    check_fingerprint(config.get("target", {}), fingerprint, directory)
    return load_file(str(directory / "model.safetensors")), config


def check_fingerprint(saved: dict, actual: dict, where: Path | str) -> None:
    mismatched = [k for k in FINGERPRINT_KEYS if k in saved and saved[k] != actual.get(k)]
    if mismatched:
        detail = ", ".join(f"{k} {saved[k]} vs {actual.get(k)}" for k in mismatched)
        raise UserError(f"checkpoint {where} was made for target {saved.get('model_id', '?')!r}, which does not "
                        f"fit {actual.get('model_id')!r} ({detail})")
