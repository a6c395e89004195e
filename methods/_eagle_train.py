"""Training objective of the EAGLE family, with HASS's aligned multi-pass forward built in.

Pass 1 is EAGLE's teacher forcing: position t sees (f_t, x_{t+1}) and predicts f_{t+1}. Pass j > 1
imitates tree depth j at inference (HASS harmonized context alignment, docs/reference.md §1.4): its inputs
are the previous pass's predictions shifted right by one (detached), and a query at t attends to
pass-1 keys at positions <= t - (j-1) and to pass-i keys (1 < i <= j) only at position t - (j-i),
i.e. to its own draft-made ancestors. This is a true causal softmax over the allowed keys (the
HASS code's multiply-mask quirk is not reproduced). Losses per pass (docs/reference.md §1.3.3, §1.4):
v_w * SmoothL1(f̂, f) + p_w * CE(softmax(head f), log_softmax(head f̂)) + topk_w * top-K CE, averaged
over passes. The net's ``split`` says which part of its output the LM head reads (CE, top-K) and which
is regressed to f and fed to the next pass: the same tensor in EAGLE, two halves in FSPAD (§1.6.2).
``evaluate`` reports top-1 agreement with the target at each depth on held-out data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicLayer

from harness.errors import UserError
from harness.train.data import Batch


@dataclass(frozen=True)
class EagleLoss:
    v_w: float = 1.0          # feature regression weight
    p_w: float = 0.1          # full soft cross-entropy weight
    topk_w: float = 0.0       # HASS top-K distillation weight (0 = EAGLE)
    topk: int = 10
    passes: int = 1           # HASS context-alignment passes (1 = EAGLE)
    noise: float = 0.2        # uniform feature noise amplitude on pass-1 inputs
    ce_sample: int = 0        # cross-entropy on at most this many random answer positions per batch (0 = all):
                              # the LM-head softmax over the vocabulary dominates CPU training time


def aligned_mask(length: int, pass_index: int, dtype: torch.dtype, device) -> Tensor:
    """[1, 1, L, pass_index * L] additive mask of pass ``pass_index`` (1-based) over all passes' keys."""
    t = torch.arange(length, device=device)[:, None]
    s = torch.arange(length, device=device)[None, :]
    blocks = [s <= t - (pass_index - 1)]
    blocks += [s == t - (pass_index - i) for i in range(2, pass_index + 1)]
    allowed = torch.cat(blocks, dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def aligned_passes(net: nn.Module, embeds: Tensor, features: Tensor, passes: int) -> list[Tensor]:
    """Outputs [B, L, H] of each pass; pass j's inputs are pass j-1's outputs shifted right (detached)."""
    batch, length, _ = embeds.shape
    cache = Cache(layer_class_to_replicate=DynamicLayer)
    positions = torch.arange(length, device=embeds.device)[None].expand(batch, -1)
    outputs = []
    inputs = features
    for j in range(1, passes + 1):
        mask = aligned_mask(length, j, embeds.dtype, embeds.device)
        out = net(embeds, inputs, positions, mask, cache)
        outputs.append(out)
        inputs = torch.cat([features[:, :1], net.split(out)[1][:, :-1].detach()], dim=1)
    return outputs


class EagleObjective:
    """Loss and held-out metrics of an EAGLE-family draft; the target's embedding and head stay frozen."""

    def __init__(self, embed: nn.Embedding, lm_head: nn.Linear, loss: EagleLoss) -> None:
        self.embed, self.lm_head, self.cfg = embed, lm_head, loss

    def head(self, features: Tensor) -> Tensor:
        return self.lm_head(features).float()

    def inputs(self, batch: Batch, noise: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features = batch.hidden[:, :-1]
        if noise:
            features = features + (torch.rand_like(features) - 0.5) * noise
        with torch.no_grad():
            embeds = self.embed(batch.ids[:, 1:]).to(features.dtype)
        mask = batch.loss_mask[:, 1:] & batch.valid[:, 1:]
        return embeds, features, batch.hidden[:, 1:], mask

    def predict(self, net: nn.Module, embeds: Tensor, features: Tensor, passes: int) -> list[Tensor]:
        return aligned_passes(net, embeds, features, passes)

    def soft_labels(self, batch: Batch, wanted: Tensor, mask: Tensor, sample: Tensor) -> tuple[Tensor, Tensor | None]:
        """The target's next-token distribution at the sampled loss positions: (p [N, V], None) from its LM head,
        or, from data with stored top-K log-probs, (p [N, K] renormalised over the K, their ids [N, K])."""
        if batch.topk_ids is None:
            with torch.no_grad():
                return torch.softmax(self.head(wanted[sample]), dim=-1), None
        if self.cfg.topk_w and batch.topk_ids.shape[-1] < self.cfg.topk:
            raise UserError(f"the data stores the top {batch.topk_ids.shape[-1]} log-probs; the loss's topk="
                            f"{self.cfg.topk} needs at least that many (datagen --topk-logprobs)")
        ids = batch.topk_ids[:, 1:][mask][sample]
        p = batch.topk_logp[:, 1:][mask][sample].exp()
        return p / p.sum(-1, keepdim=True), ids

    def loss(self, net: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        embeds, features, target, mask = self.inputs(batch, self.cfg.noise)
        wanted = target[mask]
        sample = torch.arange(wanted.shape[0], device=wanted.device)
        if self.cfg.ce_sample and wanted.shape[0] > self.cfg.ce_sample:
            sample = torch.randperm(wanted.shape[0], device=wanted.device)[: self.cfg.ce_sample]
        target_p, target_ids = self.soft_labels(batch, wanted, mask, sample)
        target_top = target_p.argmax(-1) if target_ids is None else target_ids[:, 0]
        total, logs = 0.0, {}
        outputs = self.predict(net, embeds, features, self.cfg.passes)
        for j, out in enumerate(outputs, 1):
            for_head, for_next = net.split(out)
            reg = F.smooth_l1_loss(for_next[mask], wanted, reduction="none").mean(-1).mean()
            logq = torch.log_softmax(self.head(for_head[mask][sample]), dim=-1)
            logq_labels = logq if target_ids is None else logq.gather(-1, target_ids)
            ce = -(target_p * logq_labels).sum(-1).mean()
            loss = self.cfg.v_w * reg + self.cfg.p_w * ce
            if self.cfg.topk_w:   # the K most likely (stored ids come sorted, most likely first)
                top_p, top_at = target_p.topk(self.cfg.topk, dim=-1)
                loss = loss + self.cfg.topk_w * -(top_p * logq_labels.gather(-1, top_at)).sum(-1).mean()
            total = total + loss / self.cfg.passes
            logs[f"reg{j}"], logs[f"ce{j}"] = reg.item(), ce.item()
            logs[f"acc{j}"] = float((logq.argmax(-1) == target_top).float().mean())
        extra, extra_logs = self.cross_pass_loss(net, outputs, mask, sample, target_top)
        total = total + extra
        logs.update(extra_logs)
        logs["loss"] = total.item()
        return total, logs

    def cross_pass_loss(self, net: nn.Module, outputs: list[Tensor], mask: Tensor, sample: Tensor,
                        target_top: Tensor) -> tuple[Tensor | float, dict[str, float]]:
        """Terms that look at all passes together (CORAL's); none in EAGLE and HASS. ``outputs[j][mask][sample]``
        are the positions whose target top-1 token is ``target_top``."""
        return 0.0, {}

    @torch.no_grad()
    def evaluate(self, net: nn.Module, batch: Batch, depths: int) -> dict[str, tuple[float, int]]:
        """Top-1 agreement with the target at depths 1..depths (own features fed back): (hits, count)."""
        embeds, features, target, mask = self.inputs(batch, noise=0.0)
        target_top = self.head(target[mask]).argmax(-1) if batch.topk_ids is None else \
            batch.topk_ids[:, 1:][mask][:, 0]   # once for every depth: the head dominates evaluation
        out = {}
        for j, pred in enumerate(self.predict(net, embeds, features, depths), 1):
            # Depth j needs j-1 earlier positions inside the sample; shorter contexts are not counted.
            usable = mask.clone()
            usable[:, : j - 1] = False
            hits = (self.head(net.split(pred)[0][usable]).argmax(-1) == target_top[usable[mask]]).sum()
            out[f"top1_depth{j}"] = (int(hits), int(usable.sum()))
        return out
