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


HEAD_INITS = ("random", "target")
VOCAB_SOURCES = ("init", "data")
DEFAULT_DRAFT_VOCAB = 8192   # of SmolLM2's 49,152 ids: docs/methods.md "Draft vocabulary size"


@dataclass(frozen=True)
class Eagle3Loss:
    steps: int = 7                # training-time-test unroll length (cnets.py ``self.length``)
    step_weight: float = 0.8      # step i weighs step_weight ** i (main.py)
    draft_vocab: int = DEFAULT_DRAFT_VOCAB   # V_d, the draft head's size (traineagle3/config.json: 32000 of 128256)
    ce_sample: int = 0            # per step, the cross-entropy on at most this many random loss positions (0 = all),
                                  # scaled to the full count: the draft head dominates CPU training time
    head_init: str = "random"     # "random" as the reference (cnets.py: a fresh nn.Linear); "target": lm_head starts
                                  # as the target's rows of the draft vocabulary and norm as its final norm
    layers: str = ""              # the layer inputs to fuse, e.g. "2,15,30": "" = the data's (--feature-layers);
                                  # each one the data stores, or N (the target's layer count) for the final-norm
                                  # features every datagen folder holds (not EAGLE-3's choice; see fused_layers)
    vocab: str = "init"           # with --init at the same V_d: "init" keeps that draft's vocabulary; "data" ranks
                                  # this run's data and carries the draft's rows for the tokens both hold

    def __post_init__(self) -> None:
        if self.head_init not in HEAD_INITS:
            raise UserError(f"head_init={self.head_init!r}: choose one of {', '.join(HEAD_INITS)}")
        if self.vocab not in VOCAB_SOURCES:
            raise UserError(f"vocab={self.vocab!r}: choose one of {', '.join(VOCAB_SOURCES)}")


def fused_layers(spec: str | int, stored: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """The layers a run fuses: ``stored`` (the data's) unless ``spec`` names others, each of which must be
    stored or be ``num_layers``, the input the LM head reads (transformers' ``hidden_states[N]``, after
    the final norm: the features the EAGLE-2 family drafts from). EAGLE-3 taps the input of layer N-3 as
    its high layer; on a small target the last three layers may carry what a one-layer draft needs at
    depth 1, which ``--loss layers=2,15,30`` measures (docs/methods.md)."""
    if spec in ("", None):
        return stored
    try:
        wanted = tuple(int(part) for part in str(spec).split(","))
    except ValueError:
        raise UserError(f"layers={spec!r}: give comma-separated layer numbers, e.g. 2,15,{num_layers}") from None
    missing = [i for i in wanted if i not in stored and i != num_layers]
    if missing or len(set(wanted)) != len(wanted):
        raise UserError(f"layers={spec}: the data stores the inputs of layers {','.join(map(str, stored))} and the "
                        f"final-norm features (layer {num_layers}); choose among those, each once")
    return wanted


def gather_fused(batch: Batch, stored: tuple[int, ...], wanted: tuple[int, ...]) -> Tensor:
    """[B, L, k*H] inputs of the ``wanted`` layers from the batch's ``stored`` ones; a wanted layer that is
    not stored is the final-norm features ``batch.hidden`` (fused_layers allows no other)."""
    if wanted == stored:
        return batch.layers
    columns = dict(zip(stored, batch.layers.split(batch.hidden.shape[-1], dim=-1)))
    final = batch.hidden.to(batch.layers.dtype)
    return torch.cat([columns.get(i, final) for i in wanted], dim=-1)


def data_layers(data, num_layers: int) -> tuple[int, ...]:
    """The decoder layers whose inputs the data stores (its ``--feature-layers``), refused when it has none."""
    if not data.feature_layers or any(sample.layers is None for sample in data.samples[:1]):
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


def unroll(net: nn.Module, embed: nn.Embedding, ids: Tensor, fused: Tensor, steps: int,
           wanted: list[Tensor] | None = None) -> list[Tensor]:
    """Outputs [B, L-1, H] of each step: index t of step i is the draft after the real context up to t and
    i of its own features, having been fed x_{t+1+i}. ``ids`` [B, L]; ``fused`` [B, L, k*H] layer inputs.

    The attention is computed as the reference computes it (cnets.py ``cache_hidden``): causal scores over
    the step-0 keys plus one diagonal score per later step (q_t . k_j,t), under one softmax, so a step costs
    O(L^2 + L*i) rather than the O(L^2 * i) of a dense [L, (i+1)L] mask. The draft layer at inference
    (Eagle3Layer.forward, LlamaAttention) is not used here; ``ttt_layer`` repeats its math.

    ``wanted``: per step, a bool [B, L-1] mask of the indices whose output the caller reads. Index t of step
    i > 0 only feeds index t of later steps (step 0's keys are the only ones shared across indices), so
    steps past 0 run only at the indices wanted at that step or later; other indices of their outputs are 0.
    Without it every index of every step is computed."""
    batch, length = ids.shape[0], ids.shape[1] - 1
    device = ids.device
    hidden = net.fuse(fused[:, :-1])
    every = torch.arange(length, device=device)[None].expand(batch, -1)
    tokens = torch.cat([ids[:, 1:], ids.new_zeros(batch, steps + 1)], dim=1)   # x_{t+1+i}; 0 past the end
    needed = None
    if wanted is not None:
        needed = [None] * steps
        later = torch.zeros(batch, length, dtype=torch.bool, device=device)
        for i in reversed(range(1, steps)):
            later = later | wanted[i]
            needed[i] = later
    past: dict = {"extra_k": [], "extra_v": []}
    outputs, index = [], every
    for i in range(steps):
        if i > 0:
            previous = index
            index = every if needed is None else packed_indices(needed[i], length)
            if index.shape[1] == 0:
                outputs += [torch.zeros_like(outputs[-1])] * (steps - i)
                break
            canvas = canvas_of(hidden, previous, length)
            hidden = canvas.gather(1, index[..., None].expand(-1, -1, canvas.shape[-1]))
        with torch.no_grad():
            embeds = embed(tokens.gather(1, (index + i).clamp(max=tokens.shape[1] - 1))).to(hidden.dtype)
        hidden = ttt_layer(net, embeds, hidden, index, i, past, length)
        outputs.append(hidden if i == 0 else canvas_of(hidden, index, length)[:, :length])
    return outputs


def packed_indices(needed: Tensor, length: int) -> Tensor:
    """[B, n] indices of the True entries of each row of ``needed`` [B, L] (ascending), n the largest count;
    rows with fewer are padded with ``length`` (a spare index whose results are dropped)."""
    counts = needed.sum(1)
    n = int(counts.max()) if counts.numel() else 0
    order = torch.sort((~needed).to(torch.int8), dim=1, stable=True).indices[:, :n]
    pad = torch.arange(n, device=needed.device)[None] >= counts[:, None]
    return order.masked_fill(pad, length)


def canvas_of(packed: Tensor, index: Tensor, length: int) -> Tensor:
    """[B, n, ...] rows at ``index`` [B, n] -> [B, L+1, ...] (zeros elsewhere; the pads land at index L)."""
    canvas = packed.new_zeros(packed.shape[0], length + 1, *packed.shape[2:])
    where = index.view(*index.shape, *([1] * (packed.dim() - 2))).expand_as(packed)
    return canvas.scatter(1, where, packed)


def ttt_layer(net: nn.Module, embeds: Tensor, hidden: Tensor, index: Tensor, step: int, past: dict,
              length: int) -> Tensor:
    """Eagle3Net.forward + Eagle3Layer.forward for unroll step ``step`` at indices ``index`` [B, n] (rope
    position index + step): attention over the step-0 keys at indices <= index and the keys of steps
    1..step at the same index. Step 0 (all indices) records its keys / values in ``past``; later steps add
    theirs as [B, L+1, kv heads, d] canvases."""
    layer, attn = net.midlayer, net.midlayer.self_attn
    hidden = hidden.to(embeds.dtype)
    cos, sin = net.rotary(hidden, index + step)
    x = torch.cat([layer.input_layernorm(embeds), layer.hidden_norm(hidden)], dim=-1)
    batch, n = x.shape[:2]
    d, groups = attn.head_dim, attn.num_key_value_groups
    q = attn.q_proj(x).view(batch, n, -1, d)
    k = attn.k_proj(x).view(batch, n, -1, d)
    v = attn.v_proj(x).view(batch, n, -1, d)
    q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    kv_heads = k.shape[2]
    # [B, kvh, g, n, d]: head h reads kv head h // g (LlamaAttention's repeat_kv)
    q = q.view(batch, n, kv_heads, groups, d).permute(0, 2, 3, 1, 4) * attn.scaling
    if step == 0:
        past["k0"], past["v0"] = k.permute(0, 2, 1, 3)[:, :, None], v.permute(0, 2, 1, 3)[:, :, None]
        extra_k, extra_v = [], []
    else:
        past["extra_k"].append(canvas_of(k, index, length))
        past["extra_v"].append(canvas_of(v, index, length))
        at = index[..., None, None].expand(-1, -1, kv_heads, d)
        extra_k = [k] + [c.gather(1, at) for c in past["extra_k"][:-1]]
        extra_v = [v] + [c.gather(1, at) for c in past["extra_v"][:-1]]
    main = q @ past["k0"].transpose(-1, -2)                            # [B, kvh, g, n, L]
    future = torch.arange(length, device=index.device)[None, None] > index[..., None]   # [B, n, L]
    main = main.masked_fill(future[:, None, None], torch.finfo(main.dtype).min)
    if extra_k:
        extra = torch.stack([(q * kj.permute(0, 2, 1, 3)[:, :, None]).sum(-1) for kj in extra_k], dim=-1)
        probs = torch.softmax(torch.cat([main, extra], dim=-1), dim=-1)           # [B, kvh, g, n, L + i]
        out = probs[..., :length] @ past["v0"]
        vals = torch.stack([vj.permute(0, 2, 1, 3) for vj in extra_v], dim=-2)[:, :, None]  # [B, kvh, 1, n, i, d]
        out = out + (probs[..., length:, None] * vals).sum(-2)
    else:
        out = torch.softmax(main, dim=-1) @ past["v0"]
    out = out.permute(0, 3, 1, 2, 4).reshape(batch, n, -1)
    hidden = hidden + attn.o_proj(out)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


class Eagle3Objective:
    """Training-time-test loss and held-out metrics; the target's embedding and head stay frozen."""

    def __init__(self, target, loss: Eagle3Loss, stored_layers: tuple[int, ...] | None = None) -> None:
        """``stored_layers``: the layer inputs the batches hold, when the net fuses others (fused_layers)."""
        self.target, self.cfg, self.stored_layers = target, loss, stored_layers

    def fused(self, net: nn.Module, batch: Batch) -> Tensor:
        if batch.layers is None:
            raise UserError(NO_LAYERS.format(where="this batch"))
        return gather_fused(batch, self.stored_layers or net.layers, net.layers)

    def target_logits(self, features: Tensor, columns: Tensor | None = None) -> Tensor:
        """The target's logits from final-norm features, all columns or only ``columns``."""
        head = self.target.lm_head.weight
        logits = (features @ (head if columns is None else head[columns]).T.to(features.dtype)).float()
        if self.target.logit_scale != 1.0:
            logits = logits * self.target.logit_scale
        if self.target.softcap:
            logits = torch.tanh(logits / self.target.softcap) * self.target.softcap
        return logits

    def prepare(self, net: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(loss mask m [B, L-1] of the fed x_{t+1}, row [B, L-1] of each loss position in the next two (-1
        elsewhere), the target's top-1 ids [M] and log-probabilities over the draft vocabulary [M, V_d] of
        the prediction made after x_{t+1}, at the M loss positions)."""
        mask = (batch.loss_mask & batch.valid)[:, 1:]
        row = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        row[mask] = torch.arange(int(mask.sum()), device=mask.device)
        with torch.no_grad():
            wanted = batch.hidden[:, 1:][mask]
            logits = self.target_logits(wanted)      # once: the draft columns are read from the full logits
            top = logits.argmax(-1)
            logp = torch.log_softmax(logits[:, net.target_ids().to(logits.device)], dim=-1)
            del logits
        return mask, row, top, logp

    @staticmethod
    def at_step(mask: Tensor, row: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Positions t that count at unroll step ``step`` (x_{t+1+step} is a loss token) and their rows."""
        at = shift(mask, step)
        return at, shift(row, step)[at]

    def loss(self, net: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        mask, row, top, logp = self.prepare(net, batch)
        count = max(int(mask.sum()), 1)
        in_vocab = net.t2d[top]
        # The positions each step's loss reads (and the ce_sample draw, made here so the unroll computes only
        # those positions): [K, 2] (b, t) each, in the order out[at][keep][pick] would give.
        chosen, wanted, scales, counted = [], [], [], []
        for i in range(self.cfg.steps):
            at, rows = self.at_step(mask, row, i)
            keep = in_vocab[rows]        # target top-1 outside the draft vocabulary: no loss at that position
            where = at.nonzero()[keep]
            rows = rows[keep]
            scale = 1.0
            if self.cfg.ce_sample and rows.shape[0] > self.cfg.ce_sample:
                pick = torch.randperm(rows.shape[0], device=rows.device)[:self.cfg.ce_sample]
                rows, where, scale = rows[pick], where[pick], rows.shape[0] / self.cfg.ce_sample
            used = torch.zeros_like(mask)
            used[where[:, 0], where[:, 1]] = True
            chosen.append((rows, where))
            wanted.append(used)
            scales.append(scale)
            counted.append(int(at.sum()))
        outputs = unroll(net, self.target.embed, batch.ids, self.fused(net, batch), self.cfg.steps, wanted)
        probs, best = logp.exp(), logp.argmax(-1)     # once for all steps (each step reads a subset of rows)
        total, logs = 0.0, {}
        for i, out in enumerate(outputs):
            (rows, where), scale = chosen[i], scales[i]
            draft_logp = torch.log_softmax(net.head(out[where[:, 0], where[:, 1]]).float(), dim=-1)
            ce = -(probs[rows] * draft_logp).sum() * scale / count
            total = total + self.cfg.step_weight ** i * ce
            logs[f"ce{i + 1}"] = float(ce.detach())
            hits = (draft_logp.argmax(-1) == best[rows]).sum() * scale
            logs[f"acc{i + 1}"] = float(hits) / max(counted[i], 1)
        logs["loss"] = float(total.detach())
        return total, logs

    @torch.no_grad()
    def evaluate(self, net: nn.Module, batch: Batch, depths: int) -> dict[str, tuple[float, int]]:
        """Top-1 agreement with the target's full-vocabulary top-1 at depths 1..depths (tokens outside the
        draft vocabulary count as misses): (hits, count)."""
        mask, row, top, _ = self.prepare(net, batch)
        wanted = [self.at_step(mask, row, i)[0] for i in range(depths)]
        outputs = unroll(net, self.target.embed, batch.ids, self.fused(net, batch), depths, wanted)
        out = {}
        for i, pred in enumerate(outputs):
            at, rows = self.at_step(mask, row, i)
            drafted = net.to_target(net.head(pred[at]).argmax(-1))
            out[f"top1_depth{i + 1}"] = (int((drafted == top[rows]).sum()), int(at.sum()))
        return out
