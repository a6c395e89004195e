"""EAGLE-3 training: the draft vocabulary from token frequencies, and the training-time-test objective.

Sources: SafeAILab/EAGLE@cb7e084 ``eagle/traineagle3/cnets.py`` (``Model.scandata``, ``Model.forward``,
the attention's ``cache_hidden`` loop) and ``eagle/traineagle3/main.py`` (step weights); docs/reference.md §1.9.

- Draft vocabulary (``scandata``): count every answer token (loss mask 1) of the training data, keep the
  V_d most frequent, sorted by id (ties here go to the lower id; the reference keeps Counter order).
- Training-time test (``forward``): ``steps`` = 7 unrolled steps. Step 0 is teacher forcing: position t
  gets h_t = fc(taps_t) and e(x_{t+1}) at rope position t. Step i > 0 feeds the step i-1 output at the same
  index t (the draft's own feature, not detached) with the true next token e(x_{t+1+i}) at position t+i,
  and predicts x_{t+2+i}. Its attention sees step-0 keys at indices <= t and the step-j keys (1 <= j <= i)
  at index t only, exactly what tree level i+1 sees at inference (the reference's ``cache_hidden`` loop).
- Loss of step i: soft cross-entropy between the target's distribution restricted to the draft
  vocabulary (softmax of the target logits at the ``t2d`` columns) and the draft's; positions whose
  target top-1 token is outside the draft vocabulary are left out (``position_mask = t2d[argmax] *
  loss_mask``). Steps are weighted 0.8**i and summed (main.py ``ploss_weight``). The reference divides
  each step's sum by all B*L positions (padding included); here by the number of loss positions of step
  0, which differs by a per-batch constant only. No feature regression, no input noise.
- Loss positions follow the harness's EAGLE convention (methods/_eagle_train.py): the prediction made
  after feeding x_{t+1+i} counts when that token is an answer token; the targets are the target's own
  logits, lm_head(f) on the stored final-norm features (with the model's logit scale / soft cap).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from harness.errors import UserError
from harness.train.data import Batch
from harness.train.datagen import resolve_layers

NO_LAYERS = ("eagle3 trains on the target's low/mid/high layer features, which {where} lacks: make the data "
             "with python -m harness datagen --feature-layers eagle3")


DEFAULT_DRAFT_VOCAB = 8192   # of SmolLM2's 49,152 ids: docs/methods.md "Draft vocabulary size"


@dataclass(frozen=True)
class Eagle3Loss:
    steps: int = 7                # training-time-test unroll length (cnets.py ``self.length``)
    step_weight: float = 0.8      # step i weighs step_weight ** i (main.py)
    draft_vocab: int = DEFAULT_DRAFT_VOCAB   # V_d, the draft head's size (traineagle3/config.json: 32000 of 128256)
    ce_sample: int = 0            # per step, the cross-entropy on at most this many random loss positions (0 = all),
                                  # scaled to the full count: the draft head dominates CPU training time


def data_layers(data, num_layers: int) -> tuple[int, ...]:
    """The decoder layers whose inputs the data stores (its ``--feature-layers``), refused when it has none."""
    if not data.feature_layers or any(len(sample) < 4 for sample in data.samples[:1]):
        raise UserError(NO_LAYERS.format(where=data.directory))
    return resolve_layers(data.feature_layers, num_layers)


def draft_vocabulary(data, size: int, target_vocab: int) -> Tensor:
    """The ``size`` most frequent answer-token ids of the data (all of them if fewer occur, padded with the
    lowest unused ids so the head has ``size`` rows), sorted by id."""
    if not 0 < size <= target_vocab:
        raise UserError(f"draft_vocab={size} must be in 1 .. {target_vocab} (the target's vocabulary)")
    counts = Counter()
    for ids, loss_mask, *_ in data.samples:
        counts.update(ids[loss_mask].tolist())
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:size]
    if len(ranked) < size:
        seen = set(ranked)
        ranked += [i for i in range(target_vocab) if i not in seen][:size - len(ranked)]
    return torch.tensor(sorted(ranked), dtype=torch.long)


def shift(x: Tensor, by: int) -> Tensor:
    """x[:, t + by] at index t (zeros past the end), along dim 1."""
    if by == 0:
        return x
    pad = torch.zeros_like(x[:, :by])
    return torch.cat([x[:, by:], pad], dim=1)


def unroll(net: nn.Module, embed: nn.Embedding, ids: Tensor, fused: Tensor, steps: int) -> list[Tensor]:
    """Outputs [B, L-1, H] of each step: index t of step i is the draft after the real context up to t and
    i of its own features, having been fed x_{t+1+i}. ``ids`` [B, L]; ``fused`` [B, L, k*H] layer inputs.

    The attention is computed as the reference computes it (cnets.py ``cache_hidden``): causal scores over
    the step-0 keys plus one diagonal score per later step (q_t . k_j,t), under one softmax, so a step costs
    O(L^2 + L*i) rather than the O(L^2 * i) of a dense [L, (i+1)L] mask. The draft layer at inference
    (Eagle3Layer.forward, LlamaAttention) is not used here; ``ttt_layer`` repeats its math."""
    batch, length = ids.shape[0], ids.shape[1] - 1
    hidden = net.fuse(fused[:, :-1])
    positions = torch.arange(length, device=ids.device)[None].expand(batch, -1)
    keys: list[Tensor] = []
    values: list[Tensor] = []
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
    outputs = []
    for i in range(steps):
        with torch.no_grad():
            embeds = embed(shift(ids[:, 1:], i)).to(hidden.dtype)
        hidden = ttt_layer(net, embeds, hidden, positions + i, keys, values, causal)
        outputs.append(hidden)
    return outputs


def ttt_layer(net: nn.Module, embeds: Tensor, hidden: Tensor, positions: Tensor, keys: list[Tensor],
              values: list[Tensor], causal: Tensor) -> Tensor:
    """Eagle3Net.forward + Eagle3Layer.forward for one unroll step, appending this step's keys / values
    ([B, kv heads, 1, L, d], after rope) to ``keys`` / ``values``; entry 0 is attended causally, the
    others at the query's own index only."""
    layer = net.midlayer
    attn = layer.self_attn
    hidden = hidden.to(embeds.dtype)
    cos, sin = net.rotary(hidden, positions)
    x = torch.cat([layer.input_layernorm(embeds), layer.hidden_norm(hidden)], dim=-1)
    batch, length = x.shape[:2]
    d, groups = attn.head_dim, attn.num_key_value_groups
    q = attn.q_proj(x).view(batch, length, -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(batch, length, -1, d).transpose(1, 2)
    v = attn.v_proj(x).view(batch, length, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    kv_heads = k.shape[1]
    keys.append(k[:, :, None])                       # [B, kvh, 1, L, d]: each kv head serves ``groups`` heads
    values.append(v[:, :, None])
    q = q.reshape(batch, kv_heads, groups, length, d) * attn.scaling
    main = q @ keys[0].transpose(-1, -2)             # [B, kvh, g, L, L]
    main = main.masked_fill(~causal, torch.finfo(main.dtype).min)
    if len(keys) > 1:
        extra = torch.stack([(q * kj).sum(-1) for kj in keys[1:]], dim=-1)     # [B, kvh, g, L, i]
        probs = torch.softmax(torch.cat([main, extra], dim=-1), dim=-1)
        out = probs[..., :length] @ values[0]
        out = out + (probs[..., length:, None] * torch.stack(values[1:], dim=-2)).sum(-2)
    else:
        out = torch.softmax(main, dim=-1) @ values[0]
    out = out.reshape(batch, kv_heads * groups, length, d).transpose(1, 2).reshape(batch, length, -1)
    hidden = hidden + attn.o_proj(out)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


class Eagle3Objective:
    """Training-time-test loss and held-out metrics; the target's embedding and head stay frozen."""

    def __init__(self, target, loss: Eagle3Loss) -> None:
        self.target, self.cfg = target, loss

    def target_logits(self, features: Tensor, columns: Tensor | None = None) -> Tensor:
        """The target's logits from final-norm features, all columns or only ``columns``."""
        head = self.target.lm_head.weight
        logits = (features @ (head if columns is None else head[columns]).T.to(features.dtype)).float()
        if self.target.logit_scale != 1.0:
            logits = logits * self.target.logit_scale
        if self.target.softcap:
            logits = torch.tanh(logits / self.target.softcap) * self.target.softcap
        return logits

    def prepare(self, net: nn.Module, batch: Batch, steps: int) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor]:
        """(step outputs, loss mask m [B, L-1] of the fed x_{t+1}, row [B, L-1] of each loss position in the
        next two (-1 elsewhere), the target's top-1 ids [M] and log-probabilities over the draft vocabulary
        [M, V_d] of the prediction made after x_{t+1}, at the M loss positions)."""
        if batch.layers is None:
            raise UserError(NO_LAYERS.format(where="this batch"))
        outputs = unroll(net, self.target.embed, batch.ids, batch.layers, steps)
        mask = (batch.loss_mask & batch.valid)[:, 1:]
        row = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        row[mask] = torch.arange(int(mask.sum()), device=mask.device)
        with torch.no_grad():
            wanted = batch.hidden[:, 1:][mask]
            logits = self.target_logits(wanted)      # once: the draft columns are read from the full logits
            top = logits.argmax(-1)
            columns = net.to_target(torch.arange(net.draft_vocab_size, device=mask.device))
            logp = torch.log_softmax(logits[:, columns], dim=-1)
            del logits
        return outputs, mask, row, top, logp

    @staticmethod
    def at_step(mask: Tensor, row: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Positions t that count at unroll step ``step`` (x_{t+1+step} is a loss token) and their rows."""
        at = shift(mask, step)
        return at, shift(row, step)[at]

    def loss(self, net: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        outputs, mask, row, top, logp = self.prepare(net, batch, self.cfg.steps)
        count = max(int(mask.sum()), 1)
        in_vocab = net.t2d[top]
        total, logs = 0.0, {}
        for i, out in enumerate(outputs):
            at, rows = self.at_step(mask, row, i)
            keep = in_vocab[rows]        # target top-1 outside the draft vocabulary: no loss at that position
            rows, chosen = rows[keep], out[at][keep]
            scale = 1.0
            if self.cfg.ce_sample and rows.shape[0] > self.cfg.ce_sample:
                pick = torch.randperm(rows.shape[0], device=rows.device)[:self.cfg.ce_sample]
                rows, chosen, scale = rows[pick], chosen[pick], rows.shape[0] / self.cfg.ce_sample
            target_logp = logp[rows]
            draft_logp = torch.log_softmax(net.head(chosen).float(), dim=-1)
            ce = -(target_logp.exp() * draft_logp).sum() * scale / count
            total = total + self.cfg.step_weight ** i * ce
            logs[f"ce{i + 1}"] = float(ce.detach())
            hits = (draft_logp.argmax(-1) == target_logp.argmax(-1)).sum() * scale
            logs[f"acc{i + 1}"] = float(hits) / max(int(at.sum()), 1)
        logs["loss"] = float(total.detach())
        return total, logs

    @torch.no_grad()
    def evaluate(self, net: nn.Module, batch: Batch, depths: int) -> dict[str, tuple[float, int]]:
        """Top-1 agreement with the target's full-vocabulary top-1 at depths 1..depths (tokens outside the
        draft vocabulary count as misses): (hits, count)."""
        outputs, mask, row, top, _ = self.prepare(net, batch, depths)
        out = {}
        for i, pred in enumerate(outputs):
            at, rows = self.at_step(mask, row, i)
            drafted = net.to_target(net.head(pred[at]).argmax(-1))
            out[f"top1_depth{i + 1}"] = (int((drafted == top[rows]).sum()), int(at.sum()))
        return out
