"""Self-distillation data: the target answers training prompts; its token ids, loss masks and features are stored.

``python -m harness datagen --target T --out DIR`` renders each prompt with the target's chat template,
generates the answer in batches (greedy by default: the drafter learns the target's own text), then
runs one forward over prompt + answer to record the final-norm features f_t (REFERENCE §1.3.2).
Shards are safetensors files of ``shard_size`` samples written atomically, so an interrupted run
resumes at the first missing shard; ``manifest.json`` records the target fingerprint, the prompt
sources and filtering, every setting, and per-shard counts and times.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from harness import chat, loading
from harness.errors import UserError
from harness.train.prompts import training_prompts


@dataclass(frozen=True)
class DatagenConfig:
    target: str | None = None
    out: Path = Path("data/datagen")
    sources: tuple[str, ...] = ("sharegpt", "codegen", "roleplay", "gsm8k")
    max_samples: int = 512
    max_prompt_tokens: int = 256
    max_new_tokens: int = 256
    batch_size: int = 16
    shard_size: int = 64
    temperature: float = 0.0
    seed: int = 0
    data_dir: Path | None = None
    dtype: str = "auto"
    device: str = "auto"


def run(config: DatagenConfig) -> Path:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}.get(config.dtype) \
        or getattr(torch, config.dtype)
    prompts, prompt_stats = training_prompts(list(config.sources), config.data_dir, config.seed)
    loaded = loading.load(config.target or loading.default_spec(), dtype, device)
    model, tokenizer = loaded.model, loaded.tokenizer
    fingerprint = {"model_id": loaded.model_id, "vocab_size": model.get_output_embeddings().weight.shape[0],
                   "hidden_size": model.config.hidden_size, "model_type": model.config.model_type}
    out = Path(config.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "out"}
    if manifest and (manifest["target"] != fingerprint or manifest["settings"] != settings):
        raise UserError(f"{out} holds data made with another target or settings; choose another --out")
    manifest = manifest or {"target": fingerprint, "settings": settings, "prompt_stats": prompt_stats,
                            "template": chat.template_name(tokenizer), "shards": []}
    out.mkdir(parents=True, exist_ok=True)
    encoded = _encode_prompts(tokenizer, prompts, config)
    stops = sorted(chat.stop_ids(tokenizer, getattr(model, "generation_config", None)))
    done = len(manifest["shards"]) * config.shard_size
    bar = tqdm(total=min(len(encoded), config.max_samples), initial=done, desc="datagen", unit="sample")
    for first in range(done, min(len(encoded), config.max_samples), config.shard_size):
        start = time.perf_counter()
        batch_prompts = encoded[first:min(first + config.shard_size, config.max_samples)]
        samples = []
        for i in range(0, len(batch_prompts), config.batch_size):
            chunk = batch_prompts[i:i + config.batch_size]
            samples += _features(model, _generate(model, tokenizer, chunk, stops, config), len(chunk), chunk)
            bar.update(len(chunk))
        name = f"shard_{len(manifest['shards']):05d}.safetensors"
        tokens = _write_shard(out / name, samples)
        manifest["shards"].append({"file": name, "samples": len(samples), "tokens": tokens,
                                   "answer_tokens": int(sum(int(s[1].sum()) for s in samples)),
                                   "seconds": round(time.perf_counter() - start, 2)})
        _save_json(manifest_path, manifest)
        total_mb = sum((out / s["file"]).stat().st_size for s in manifest["shards"]) / 2**20
        bar.write(f"{name}: {len(samples)} samples, {tokens} tokens, {manifest['shards'][-1]['seconds']} s; "
                  f"{total_mb:.1f} MiB so far")
    bar.close()
    if not manifest["shards"]:
        raise UserError("no training prompts fit --max-prompt-tokens; raise it or add sources")
    return out


def _encode_prompts(tokenizer, prompts: list[str], config: DatagenConfig) -> list[list[int]]:
    encoded = []
    for text in prompts:
        ids = chat.render(tokenizer, [{"role": "user", "content": text}]).tolist()
        if len(ids) <= config.max_prompt_tokens:
            encoded.append(ids)
    return encoded


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[list[int]], stops: list[int], config: DatagenConfig) -> list[list[int]]:
    """Answers for a batch of prompts (left-padded), each cut after its first stop token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    sampled = config.temperature > 0
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=config.max_new_tokens,
                         do_sample=sampled, temperature=config.temperature if sampled else None,
                         top_p=None, top_k=None, eos_token_id=stops, pad_token_id=pad)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        answers.append(row[:cut])
    return answers


@torch.no_grad()
def _features(model, answers: list[list[int]], count: int, prompts: list[list[int]]) -> list[tuple]:
    """(ids, loss_mask, features) per sample from one right-padded forward of prompt + answer."""
    sequences = [p + a for p, a in zip(prompts, answers)]
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=model.device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    samples = []
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        length = len(prompt) + len(answer)
        loss_mask = torch.tensor([0] * len(prompt) + [1] * len(answer), dtype=torch.uint8)
        samples.append((ids[row, :length].int().cpu(), loss_mask, hidden[row, :length].to(torch.bfloat16).cpu()))
    return samples


def _write_shard(path: Path, samples: list[tuple]) -> int:
    lengths = torch.tensor([0] + [s[0].shape[0] for s in samples])
    tensors = {"input_ids": torch.cat([s[0] for s in samples]), "loss_mask": torch.cat([s[1] for s in samples]),
               "hidden": torch.cat([s[2] for s in samples]), "offsets": lengths.cumsum(0)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return int(lengths.sum())


def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
