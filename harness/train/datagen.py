"""Self-distillation data: the target answers training prompts; its token ids, loss masks and features are stored.

``python -m harness datagen --target T --out DIR`` renders each prompt with the target's chat template,
generates the answer in batches (greedy by default: the drafter learns the target's own text), then
runs one forward over prompt + answer to record the final-norm features f_t (docs/reference.md §1.3.2) and, with
``feature_layers``, the inputs of those decoder layers concatenated (EAGLE-3's fused low/mid/high features,
``hidden_layers`` [T, k*H] bf16; ``eagle3`` picks the layers, see methods/eagle3.py) and, with ``topk_logprobs``
K, the target's K most likely next tokens at every position with their log-probabilities (``topk_ids``
int32, ``topk_logp`` fp16, computed from the fp32 features), which spares training the target's LM head.
Shards are safetensors files of ``shard_size`` samples written atomically, so an interrupted run
resumes at the missing shards; ``manifest.json`` records the target fingerprint, the prompt
sources and filtering, every setting, and per-shard counts and times. With ``workers`` (Ray,
harness/cluster.py) the shards are made on Ray workers and written here; a shard depends only on its
index (its prompts, batches and sampling seed), so the data is the same token for token.

Generating the answers is nearly all the cost (one decoding step per token against one forward per sample for
the features), so each shard's answers are also kept on their own in ``answers`` (token ids only, about 50 KB
per shard: small enough to commit). A shard whose answers are there is rebuilt from them with the feature
forward alone, which is how a folder lost with a machine comes back in minutes; the file records what the
answers depend on (target, decoding settings, a digest of the shard's prompts) and other settings are refused.
Ray workers read the answers folder when they share this file system and otherwise generate.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from harness import chat, env, loading
from harness.errors import UserError
from harness.train.data import SHARD_KEYS, Sample
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
    feature_layers: tuple[str, ...] = ()   # decoder layers whose inputs are also stored; "eagle3": 2, N//2, N-3
    topk_logprobs: int = 0                 # store the target's top-K next-token log-probs (0: none)
    answers: Path | None = None            # the answers-only copy (default: <out>/answers); a location, not a setting

    @property
    def answers_dir(self) -> Path:
        return Path(self.answers) if self.answers is not None else Path(self.out) / "answers"


class ShardMaker:
    """The target and the encoded prompts; makes any shard from its index alone."""

    def __init__(self, config: DatagenConfig) -> None:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}.get(config.dtype) \
            or getattr(torch, config.dtype)
        self.config = config
        self.decoding = {"dtype": str(dtype).removeprefix("torch."), "device_type": torch.device(device).type}
        prompts, self.prompt_stats = training_prompts(list(config.sources), config.data_dir, config.seed)
        loaded = loading.load(config.target or loading.default_spec(), dtype, device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.fingerprint = {"model_id": loaded.model_id,
                            "vocab_size": self.model.get_output_embeddings().weight.shape[0],
                            "hidden_size": self.model.config.hidden_size, "model_type": self.model.config.model_type}
        self.layers = resolve_layers(config.feature_layers, self.model.config.num_hidden_layers)
        self.encoded = _encode_prompts(self.tokenizer, prompts, config)[:config.max_samples]
        self.stops = sorted(chat.stop_ids(self.tokenizer, getattr(self.model, "generation_config", None)))

    def make(self, index: int, progress=lambda n: None) -> tuple[dict, dict]:
        """(tensors, manifest entry) of shard ``index``; ``progress`` hears of each finished batch."""
        config = self.config
        start = time.perf_counter()
        torch.manual_seed(config.seed * 1_000_003 + index)   # sampled answers depend on the shard alone
        prompts = self.prompts_of(index)
        meta = self.answer_meta(prompts)
        kept = load_answers(config.answers_dir / shard_name(index), meta)
        samples = []
        for i in range(0, len(prompts), config.batch_size):
            chunk = prompts[i:i + config.batch_size]
            answers = kept[i:i + config.batch_size] if kept is not None else \
                _generate(self.model, self.tokenizer, chunk, self.stops, config)
            samples += _features(self.model, answers, chunk, self.layers, config.topk_logprobs)
            progress(len(chunk))
        tensors = shard_tensors(samples)
        entry = {"file": shard_name(index), "samples": len(samples), "tokens": int(tensors["offsets"][-1]),
                 "answer_tokens": int(sum(int(s.loss_mask.sum()) for s in samples)),
                 "seconds": round(time.perf_counter() - start, 2), "answers_reused": kept is not None,
                 "answer_meta": meta}
        return tensors, entry

    def prompts_of(self, index: int) -> list[list[int]]:
        """The encoded prompts of shard ``index``."""
        return self.encoded[index * self.config.shard_size:(index + 1) * self.config.shard_size]

    def answer_meta(self, prompts: list[list[int]]) -> dict:
        """What a shard's answers depend on: the target, the decoding settings and the prompts themselves."""
        config = self.config
        digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
        return {"model_id": self.fingerprint["model_id"], "vocab_size": self.fingerprint["vocab_size"],
                "temperature": config.temperature, "seed": config.seed, "max_new_tokens": config.max_new_tokens,
                "batch_size": config.batch_size, **self.decoding, "prompts_sha256": digest}


class ShardWorker:
    """A Ray actor around a ShardMaker (harness/cluster.py Pool)."""

    def __init__(self, config: DatagenConfig, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.config = config

    def load(self) -> dict:
        self.maker = ShardMaker(self.config)
        agree = {"target": self.maker.fingerprint, "prompts": len(self.maker.encoded)}
        return {"agree": agree, "worker": env.worker(self.maker.model.device), "prompt_stats": self.maker.prompt_stats,
                "template": chat.template_name(self.maker.tokenizer)}

    def work(self, index: int) -> tuple[dict, dict]:
        return self.maker.make(index)


def eagle3_layers(num_layers: int) -> tuple[int, ...]:
    """EAGLE-3's low / middle / high taps: the inputs of layers 2, N//2 and N-3 (SafeAILab/EAGLE@cb7e084
    eagle/traineagle3/modeling_llama_kv.py, LlamaModel.forward), in layer order. Targets with fewer than 6
    layers (test models) get the indices clamped to 0 .. N-1, so there are always three."""
    return tuple(sorted(min(max(i, 0), num_layers - 1) for i in (2, num_layers // 2, num_layers - 3)))


def resolve_layers(names: tuple[str, ...], num_layers: int) -> tuple[int, ...]:
    """Layer indices from ``--feature-layers`` (numbers, or ``eagle3``)."""
    if tuple(names) == ("eagle3",):
        return eagle3_layers(num_layers)
    try:
        layers = tuple(int(name) for name in names)
    except ValueError:
        raise UserError(f"--feature-layers {','.join(names)}: give layer numbers or 'eagle3'") from None
    if any(not 0 <= i < num_layers for i in layers):
        raise UserError(f"--feature-layers {','.join(names)}: the target has layers 0..{num_layers - 1}")
    return layers


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def run(config: DatagenConfig, workers: int | None = None, cluster: str | None = None) -> Path:
    """Make the missing shards of ``config.out``, here or on ``workers`` Ray workers (at ``cluster``)."""
    if workers:
        from harness import cluster as ray_cluster   # imports Ray, which nothing else needs
        started = ray_cluster.connect(cluster)
        pool = ray_cluster.Pool(ShardWorker, (config,), workers, config.device, None, local=cluster is None)
        try:
            info = pool.start()
            return _write(config, info["agree"]["target"], info["prompt_stats"], info["template"],
                          info["agree"]["prompts"], lambda todo, bar: (r for _, r in pool.results(deque(todo))),
                          per_batch=False)
        finally:
            pool.stop()
            if started:
                ray_cluster.require_ray().shutdown()
    maker = ShardMaker(config)
    _keep_answers_of_made_shards(config, maker)
    return _write(config, maker.fingerprint, maker.prompt_stats, chat.template_name(maker.tokenizer),
                  len(maker.encoded), lambda todo, bar: (maker.make(index, bar.update) for index in todo),
                  per_batch=True)


def _write(config: DatagenConfig, fingerprint: dict, prompt_stats: dict, template: str, prompts: int,
           make, per_batch: bool) -> Path:
    """The one writer: checks the folder, then writes each shard made by ``make(todo, bar)`` atomically and
    records it in the manifest (kept in shard order). ``per_batch``: ``make`` moves the bar itself."""
    out = Path(config.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    # As the manifest stores them (tuples become lists), so a resumed run compares like with like.
    # Locations are not settings; unset feature_layers / topk_logprobs are left out, so folders made before
    # they existed still resume.
    settings = json.loads(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                                      if k not in ("out", "answers")
                                      and not (k in ("feature_layers", "topk_logprobs") and not v)}))
    if manifest and (manifest["target"] != fingerprint or _fixed(manifest["settings"]) != _fixed(settings)):
        raise UserError(f"{out} holds data made with another target or settings; choose another --out")
    if manifest:
        _check_growth(manifest, prompts, config)
        manifest["settings"]["max_samples"] = config.max_samples
    manifest = manifest or {"target": fingerprint, "settings": settings, "prompt_stats": prompt_stats,
                            "template": template, "shards": []}
    out.mkdir(parents=True, exist_ok=True)
    done = {shard["file"] for shard in manifest["shards"]}
    sizes = _shard_sizes(prompts, config.shard_size)
    todo = [index for index in range(len(sizes)) if shard_name(index) not in done]
    left = sum(sizes[i] for i in todo)
    bar = tqdm(total=prompts, initial=prompts - left, desc="datagen", unit="sample")
    for tensors, entry in make(todo, bar):
        save_answers(config.answers_dir / entry["file"], answers_of(tensors), entry.pop("answer_meta"))
        save_shard(out / entry["file"], tensors)
        manifest["shards"] = sorted(manifest["shards"] + [entry], key=lambda shard: shard["file"])
        _save_json(manifest_path, manifest)
        if not per_batch:
            bar.update(entry["samples"])
        total_mb = sum((out / s["file"]).stat().st_size for s in manifest["shards"]) / 2**20
        bar.write(f"{entry['file']}: {entry['samples']} samples, {entry['tokens']} tokens, {entry['seconds']} s; "
                  f"{total_mb:.1f} MiB so far")
    bar.close()
    if not manifest["shards"]:
        raise UserError("no training prompts fit --max-prompt-tokens; raise it or add sources")
    return out


def _shard_sizes(prompts: int, shard_size: int) -> list[int]:
    """How many samples each shard holds when the folder has ``prompts`` of them (the last may be partial)."""
    return [min(shard_size, prompts - start) for start in range(0, prompts, shard_size)]


def _fixed(settings: dict) -> dict:
    """The settings a folder's shards depend on: all but ``max_samples``, which only says how many shards
    there are (a shard's prompts depend on its index alone), so a folder can be grown or resumed with more."""
    return {k: v for k, v in settings.items() if k != "max_samples"}


def _check_growth(manifest: dict, prompts: int, config: DatagenConfig) -> None:
    """Refuse a ``max_samples`` under which a shard already made would hold other samples (fewer, or a
    last shard that was partial and would now be filled)."""
    expected_of = {shard_name(index): size for index, size in enumerate(_shard_sizes(prompts, config.shard_size))}
    for shard in manifest["shards"]:
        expected = expected_of.get(shard["file"], 0)
        if shard["samples"] != expected:
            made = sum(s["samples"] for s in manifest["shards"])
            raise UserError(f"{config.out} holds {shard['samples']} samples in {shard['file']}, which "
                            f"--max-samples {config.max_samples} would make {expected}: keep --max-samples "
                            f"{manifest['settings']['max_samples']} (the folder has {made}), or choose another --out")


def _keep_answers_of_made_shards(config: DatagenConfig, maker: ShardMaker) -> None:
    """Shards made before answers were kept on their own (or with another ``--answers``) get theirs now."""
    manifest_path = Path(config.out) / "manifest.json"
    made = {shard["file"] for shard in json.loads(manifest_path.read_text())["shards"]} \
        if manifest_path.is_file() else set()
    for index in range(-(-len(maker.encoded) // config.shard_size)):
        name = shard_name(index)
        shard, path = Path(config.out) / name, config.answers_dir / name
        if name in made and shard.is_file() and not path.is_file():
            with safe_open(str(shard), "pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in ("input_ids", "loss_mask", "offsets")}
            save_answers(path, answers_of(tensors), maker.answer_meta(maker.prompts_of(index)))


def answers_of(tensors: dict) -> list[list[int]]:
    """Each sample's answer (its loss-masked token ids) from a shard's tensors."""
    offsets = tensors["offsets"].tolist()
    ids, mask = tensors["input_ids"], tensors["loss_mask"].bool()
    return [ids[a:b][mask[a:b]].tolist() for a, b in zip(offsets, offsets[1:])]


def save_answers(path: Path, answers: list[list[int]], meta: dict) -> None:
    """One shard's answers (int32 ids + offsets) with what they depend on in the file's metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = torch.tensor([0] + [len(a) for a in answers])
    ids = torch.tensor([t for a in answers for t in a], dtype=torch.int32)
    tmp = path.with_suffix(".tmp")
    save_file({"ids": ids, "offsets": lengths.cumsum(0)}, str(tmp), metadata={"answer_meta": json.dumps(meta)})
    tmp.replace(path)


def load_answers(path: Path, meta: dict) -> list[list[int]] | None:
    """The answers kept at ``path`` (None when there are none); answers made otherwise are refused."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as handle:
        kept = json.loads(handle.metadata()["answer_meta"])
        if kept != meta:
            differ = ", ".join(f"{k}: {kept.get(k)!r} there, {meta.get(k)!r} here"
                               for k in sorted(set(kept) | set(meta)) if kept.get(k) != meta.get(k))
            raise UserError(f"{path} holds answers made otherwise ({differ}); point --answers elsewhere")
        ids, offsets = handle.get_tensor("ids").tolist(), handle.get_tensor("offsets").tolist()
    return [ids[a:b] for a, b in zip(offsets, offsets[1:])]


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
def _features(model, answers: list[list[int]], prompts: list[list[int]], layers: tuple[int, ...] = (),
              topk: int = 0) -> list[Sample]:
    """A Sample per prompt + answer from one right-padded forward: ids, loss mask, features, and the layer
    features / top-K log-probs when asked for.

    Layer ``i``'s input is ``hidden_states[i]`` of transformers' output (index 0: the embeddings). The
    log-probs are the LM head's over the fp32 features, without any family-specific logit scaling, as the
    trainers' objectives compute them."""
    sequences = [p + a for p, a in zip(prompts, answers)]
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=model.device)
    out = model.get_decoder()(input_ids=ids, attention_mask=mask, output_hidden_states=bool(layers))
    hidden = out.last_hidden_state
    fused = torch.cat([out.hidden_states[i] for i in layers], dim=-1) if layers else None
    samples = []
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        length = len(prompt) + len(answer)
        loss_mask = torch.tensor([0] * len(prompt) + [1] * len(answer), dtype=torch.uint8)
        top = torch.log_softmax(model.get_output_embeddings()(hidden[row, :length]).float(), -1).topk(topk) \
            if topk else None
        samples.append(Sample(ids[row, :length].int().cpu(), loss_mask, hidden[row, :length].to(torch.bfloat16).cpu(),
                              None if fused is None else fused[row, :length].to(torch.bfloat16).cpu(),
                              None if top is None else top.indices.int().cpu(),
                              None if top is None else top.values.half().cpu()))
    return samples


def shard_tensors(samples: list[tuple]) -> dict:
    """A shard's tensors from Samples (or plain (ids, loss_mask, hidden[, layers]) tuples, as tests write)."""
    samples = [Sample(*s) for s in samples]
    lengths = torch.tensor([0] + [s.ids.shape[0] for s in samples])
    return {"offsets": lengths.cumsum(0), **{key: torch.cat([getattr(s, field) for s in samples])
                                             for field, key in SHARD_KEYS.items() if getattr(samples[0], field) is not None}}


def save_shard(path: Path, tensors: dict) -> None:
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
