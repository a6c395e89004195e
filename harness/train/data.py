"""Training data from datagen shards: samples in memory, a held-out split, and padded batches.

A sample is (token ids [L], loss mask [L], target features [L, H]) and, in folders made with
``datagen --feature-layers``, the chosen decoder layers' inputs [L, k*H] (EAGLE-3's fused features; kept
in bf16 until batched); with ``datagen --topk-logprobs K``, the target's K most likely next tokens at each
position and their log-probabilities (so training need not run the target's LM head again). The loss mask
marks the target's own answer tokens. Batches are right-padded; ``valid`` marks real positions.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from safetensors import safe_open
from torch import Tensor

from harness.errors import UserError


class Sample(NamedTuple):
    ids: Tensor
    loss_mask: Tensor
    hidden: Tensor
    layers: Tensor | None = None
    topk_ids: Tensor | None = None
    topk_logp: Tensor | None = None


# Shard tensor name of each Sample field (datagen writes them, FeatureData reads them); the last three are
# optional. Samples are concatenated along the first axis, and ``offsets`` marks where each one starts.
SHARD_KEYS = {"ids": "input_ids", "loss_mask": "loss_mask", "hidden": "hidden", "layers": "hidden_layers",
              "topk_ids": "topk_ids", "topk_logp": "topk_logp"}


@dataclass(frozen=True)
class Batch:
    ids: Tensor        # [B, L] long
    hidden: Tensor     # [B, L, H] float, target features f_t
    loss_mask: Tensor  # [B, L] bool, answer tokens
    valid: Tensor      # [B, L] bool, not padding
    layers: Tensor | None = None   # [B, L, k*H] float, decoder-layer inputs (datagen --feature-layers)
    topk_ids: Tensor | None = None   # [B, L, K] long, the target's K most likely next tokens, most likely first
    topk_logp: Tensor | None = None  # [B, L, K] float, their log-probabilities (both: datagen --topk-logprobs)


class FeatureData:
    def __init__(self, directory: str | Path, max_len: int = 1024, max_samples: int | None = None,
                 fields: tuple[str, ...] = Sample._fields) -> None:
        """``max_samples``: only the first N samples in shard order (a fixed subset of a larger folder).
        ``fields``: the Sample fields to read (the rest are None); ids and loss_mask alone skip the features,
        which run to gigabytes, for tools that only count tokens."""
        unknown = set(fields) - set(Sample._fields)
        if unknown or not {"ids", "loss_mask"} <= set(fields):
            raise ValueError(f"fields={fields}: need ids and loss_mask, and only names among {Sample._fields}")
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise UserError(f"{directory} is not a datagen folder (no manifest.json); run python -m harness datagen "
                            "(with --answers DIR, committed answers are rebuilt without generating: docs/training.md)")
        self.directory = directory
        self.manifest = json.loads(manifest_path.read_text())
        self.samples: list[Sample] = []
        for shard in self.manifest["shards"]:
            if max_samples is not None and len(self.samples) >= max_samples:
                break
            with safe_open(str(directory / shard["file"]), "pt") as tensors:
                stored = set(tensors.keys())
                columns = [tensors.get_tensor(SHARD_KEYS[field]) if field in fields and SHARD_KEYS[field] in stored
                           else None for field in Sample._fields]
                offsets = tensors.get_tensor("offsets").tolist()
            for start, end in zip(offsets, offsets[1:]):
                part = slice(start, min(end, start + max_len))
                sample = Sample(*(None if column is None else column[part] for column in columns))
                self.samples.append(sample._replace(ids=sample.ids.long(), loss_mask=sample.loss_mask.bool()))
        self.samples = self.samples[:max_samples]
        if not self.samples:
            raise UserError(f"{directory} holds no samples")

    @property
    def feature_layers(self) -> tuple[str, ...]:
        """The ``--feature-layers`` the folder was made with (empty: final-norm features only)."""
        return tuple(self.manifest["settings"].get("feature_layers") or ())

    @property
    def fingerprint(self) -> dict:
        return self.manifest["target"]

    def tokens(self, indices: list[int]) -> int:
        return sum(int(self.samples[i][1].sum()) for i in indices)

    def split(self, holdout: float, seed: int, holdout_from: int = 0,
              holdout_of: int | None = None) -> tuple[list[int], list[int]]:
        """(train, held-out) sample indices: a seeded ``holdout`` share of the samples, drawn among those from
        index ``holdout_from`` on (samples an ``--init`` draft never trained on, when it trained on a prefix).
        ``holdout_of`` N draws them as the folder's first N samples alone would, and trains on every sample
        past N too: a folder grown by datagen keeps the held-out set its earlier drafts were measured on."""
        pool = len(self.samples) if holdout_of is None else holdout_of
        if not 0 < pool <= len(self.samples):
            raise UserError(f"holdout_of={holdout_of}: {self.directory} holds {len(self.samples)} samples")
        if not 0 <= holdout_from < pool:
            raise UserError(f"holdout_from={holdout_from}: the split is drawn from {pool} samples "
                            f"({self.directory} holds {len(self.samples)} samples)")
        order = list(range(pool))
        random.Random(seed).shuffle(order)
        count = max(1, int(round(holdout * len(order)))) if len(order) > 1 else 0
        held_out = [i for i in order if i >= holdout_from][:count]
        chosen = set(held_out)
        return [i for i in order if i not in chosen] + list(range(pool, len(self.samples))), held_out

    def batches(self, indices: list[int], batch_size: int, rng: random.Random | None, device) -> Iterator[Batch]:
        """Batches of similar lengths (less padding); shuffled when rng is given."""
        for group in self.groups(indices, batch_size, rng):
            yield self.collate(group, device)

    def groups(self, indices: list[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
        """The sample indices of each batch: sorted by length, cut into batches, shuffled when rng is given."""
        order = sorted(indices, key=lambda i: self.samples[i][0].shape[0])
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if rng is not None:
            rng.shuffle(groups)
        return groups

    def collate(self, indices: list[int], device) -> Batch:
        return self._collate([self.samples[i] for i in indices], device)

    @staticmethod
    def _collate(samples: list[Sample], device) -> Batch:
        width = max(s.ids.shape[0] for s in samples)

        def padded(field: str, dtype: torch.dtype) -> Tensor | None:
            """[B, width, ...] of one field, zero-padded; None unless every sample has it."""
            parts = [getattr(s, field) for s in samples]
            if any(p is None for p in parts):
                return None
            out = torch.zeros(len(parts), width, *parts[0].shape[1:], dtype=dtype)
            for row, part in enumerate(parts):
                out[row, :part.shape[0]] = part.to(dtype)
            return out.to(device)

        valid = torch.zeros(len(samples), width, dtype=torch.bool)
        for row, s in enumerate(samples):
            valid[row, :s.ids.shape[0]] = True
        return Batch(padded("ids", torch.long), padded("hidden", torch.float32), padded("loss_mask", torch.bool),
                     valid.to(device), padded("layers", torch.float32), padded("topk_ids", torch.long),
                     padded("topk_logp", torch.float32))
