"""CORAL: HASS training plus cross-step representation alignment, and a grouped, routed LM head.

Sources: docs/reference.md §1.5 (arXiv 2502.16880). Only the abstract is primary and no code is public, so
every unknown is a setting recorded in the checkpoint; the defaults are our assumptions:

- Training is HASS's (n = ``passes`` aligned passes, top-K distillation, methods/_eagle_train.py) plus
  CSRA: InfoNCE over cosine similarities at temperature ``csra_tau``. For a pair of passes, the anchor
  is the draft's feature (the one fed to the next step) at a position in one pass, the positive is the
  same position's feature in the other pass, and the negatives are the other ``csra_sample`` positions
  sampled from the batch. ``csra_pairs``: every pair of passes, or pass 1 against each later one.
- LM-head grouping: the ``always_on`` most frequent answer tokens of the training data are always
  scored; the rest of the vocabulary is split into ``num_groups`` equal groups (``grouping``: balanced
  recursive bisection of the LM-head rows along their principal direction, frequency bands, or token-id
  order). A router p = softmax(W2(SiLU(W1 h) + h)) over groups reads the draft feature h. It learns from
  the draft's detached features in the same run, so it never changes the draft, to predict the group of
  the target's top token (positions whose top token is always on are not labels).
- Inference: at each tree level the ``top_groups`` groups with the most router mass summed over the
  level's nodes are scored, plus the always-on set. Log-probabilities are normalised over that subset
  and the dynamic tree is built from them. The verifier is untouched, so output stays exact at every
  temperature: grouping only changes what is proposed. ``coral-fullhead`` is the same draft scoring the
  whole vocabulary (the ablation, and the reference for the LM-head speedup).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.drafter import METHODS
from harness.errors import UserError
from harness.learned import Accepts
from harness.target import Target
from methods import _eagle_io as eagle_io
from methods._eagle_train import EagleLoss, EagleObjective
from methods.eagle2 import EagleNet, EagleOptions
from methods.hass import Hass

GROUPINGS = ("bisect", "frequency", "contiguous")


@dataclass(frozen=True)
class CoralLoss(EagleLoss):
    passes: int = 3
    topk_w: float = 1.0
    csra_w: float = 0.1           # assumption: the paper's weight is not public
    csra_tau: float = 0.1         # assumption
    csra_pairs: str = "all"       # all | anchor (pass 1 against each later pass)
    csra_sample: int = 256        # positions per batch in the InfoNCE: each one's negatives are the others
    router_w: float = 1.0         # router cross-entropy on detached draft features
    num_groups: int = 32          # vocabulary grouping, fixed at training time (saved under architecture)
    always_on: int = 1024
    grouping: str = "bisect"      # bisect | frequency | contiguous
    router_eval_groups: int = 8   # groups counted as active for the held-out router recall


@dataclass(frozen=True)
class CoralOptions(EagleOptions):
    top_groups: int = 8           # groups scored per tree level, besides the always-on set (0 = whole head)


class GroupRouter(nn.Module):
    """Logits over vocabulary groups: W2(SiLU(W1 h) + h)."""

    def __init__(self, hidden: int, groups: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, hidden)
        self.w2 = nn.Linear(hidden, groups)

    def forward(self, features: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(features)) + features)


class CoralNet(EagleNet):
    """EAGLE-2's network plus a group router and the vocabulary layout it routes over."""

    def __init__(self, target_model: nn.Module, bias: bool = True, num_groups: int = 32, always_on: int = 1024,
                 grouping: str = "contiguous") -> None:
        super().__init__(target_model, bias=bias)
        vocab, hidden = self.config.vocab_size, self.config.hidden_size
        if not 0 <= always_on < vocab or not 1 <= num_groups <= vocab - always_on:
            raise UserError(f"coral: num_groups={num_groups}, always_on={always_on} do not fit a vocabulary of {vocab}")
        self.num_groups, self.always_on, self.grouping = num_groups, always_on, grouping
        self.router = GroupRouter(hidden, num_groups)
        # Token ids in layout order: the always-on set, then group 0, group 1, ... (see bounds()).
        self.register_buffer("token_order", torch.arange(vocab))

    def bounds(self) -> list[int]:
        """Segment edges in token_order: segment 0 is the always-on set, segment g + 1 is group g."""
        rest = self.config.vocab_size - self.always_on
        return [0] + [self.always_on + rest * g // self.num_groups for g in range(self.num_groups + 1)]

    def group_of(self) -> Tensor:
        """[V] group of each token; -1 for always-on tokens."""
        groups = torch.full_like(self.token_order, -1)
        edges = self.bounds()
        for g in range(self.num_groups):
            groups[self.token_order[edges[g + 1]:edges[g + 2]]] = g
        return groups


def answer_token_counts(data, vocab: int) -> Tensor:
    """How often each token is an answer token in the training data (zeros without data)."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for ids, loss_mask, *_ in (data.samples if data is not None else []):
        counts += torch.bincount(ids[loss_mask], minlength=vocab)[:vocab]
    return counts


def build_token_order(head_weight: Tensor, counts: Tensor, num_groups: int, always_on: int, grouping: str) -> Tensor:
    """Token ids in layout order: the ``always_on`` most frequent, then ``num_groups`` equal groups."""
    frequent = torch.argsort(-counts, stable=True)[:always_on]
    rest_mask = torch.ones(counts.shape[0], dtype=torch.bool)
    rest_mask[frequent] = False
    rest = rest_mask.nonzero().flatten()
    sizes = [(len(rest) * (g + 1)) // num_groups - (len(rest) * g) // num_groups for g in range(num_groups)]
    if grouping == "contiguous":
        ordered = rest
    elif grouping == "frequency":
        ordered = rest[torch.argsort(-counts[rest], stable=True)]
    else:
        ordered = _bisect(head_weight[rest].float(), rest, sizes, torch.Generator().manual_seed(0))
    return torch.cat([frequent, ordered])


def _bisect(rows: Tensor, ids: Tensor, sizes: list[int], generator: torch.Generator) -> Tensor:
    """Balanced recursive split along the rows' principal direction (power iteration): similar LM-head
    rows, i.e. tokens the head scores alike, land in the same group, and every group has its set size."""
    if len(sizes) == 1:
        return ids
    half = len(sizes) // 2
    centered = rows - rows.mean(0)
    direction = torch.randn(rows.shape[1], generator=generator)
    for _ in range(10):
        direction = centered.T @ (centered @ direction)
        direction = direction / direction.norm().clamp_min(1e-12)
    order = torch.argsort(centered @ direction, stable=True)
    left, right = order[:sum(sizes[:half])], order[sum(sizes[:half]):]
    return torch.cat([_bisect(rows[left], ids[left], sizes[:half], generator),
                      _bisect(rows[right], ids[right], sizes[half:], generator)])


class CoralObjective(EagleObjective):
    """HASS's losses, plus CSRA across passes and the router's cross-entropy; held-out router recall."""

    def cross_pass_loss(self, net: CoralNet, outputs: list[Tensor], mask: Tensor, sample: Tensor,
                        target_top: Tensor) -> tuple[Tensor | float, dict[str, float]]:
        cfg, total, logs = self.cfg, 0.0, {}
        if cfg.csra_w and len(outputs) > 1:
            features = [net.split(out)[1][mask] for out in outputs]
            pick = torch.randperm(features[0].shape[0], device=mask.device)[: cfg.csra_sample]
            z = [F.normalize(f[pick], dim=-1) for f in features]
            pairs = ([(0, j) for j in range(1, len(z))] if cfg.csra_pairs == "anchor"
                     else list(itertools.combinations(range(len(z)), 2)))
            labels = torch.arange(len(pick), device=mask.device)
            csra = sum(0.5 * (F.cross_entropy(z[i] @ z[j].T / cfg.csra_tau, labels)
                              + F.cross_entropy(z[j] @ z[i].T / cfg.csra_tau, labels)) for i, j in pairs) / len(pairs)
            total = total + cfg.csra_w * csra
            logs["csra"] = csra.item()
        if cfg.router_w:
            labels = net.group_of()[target_top]
            routed = labels >= 0
            if routed.any():
                inputs = torch.cat([net.split(out)[0][mask][sample][routed].detach() for out in outputs])
                wanted = labels[routed].repeat(len(outputs))
                logits = net.router(inputs).float()
                router = F.cross_entropy(logits, wanted)
                total = total + cfg.router_w * router
                logs["router"] = router.item()
                logs["router_acc"] = float((logits.argmax(-1) == wanted).float().mean())
        return total, logs

    @torch.no_grad()
    def evaluate(self, net: CoralNet, batch, depths: int) -> dict[str, tuple[float, int]]:
        """Top-1 agreement per depth, and how often the target's top token lies in the active set
        (always-on tokens plus the router's ``router_eval_groups`` best groups) at depth 1."""
        out = super().evaluate(net, batch, depths)
        embeds, features, target, mask = self.inputs(batch, noise=0.0)
        draft = net.split(self.predict(net, embeds, features, 1)[0])[0][mask]
        group = net.group_of()[self.head(target[mask]).argmax(-1)]
        active = net.router(draft).topk(min(self.cfg.router_eval_groups, net.num_groups), dim=-1).indices
        hits = (group < 0) | (active == group[:, None]).any(-1)
        out["router_recall"] = (int(hits.sum()), int(hits.numel()))
        return out


@METHODS.register("coral")
class Coral(Hass):
    summary = ("CORAL: HASS + cross-step representation alignment; the draft scores only router-chosen "
               "LM-head groups (needs a checkpoint)")
    Options = CoralOptions
    net_class = CoralNet
    loss_defaults = CoralLoss()
    objective_class = CoralObjective

    def __init__(self, target: Target, checkpoint: str | None = None, **options) -> None:
        super().__init__(target, checkpoint, **options)
        groups, net = self.options.top_groups, self.net
        if not 0 <= groups <= net.num_groups:
            raise UserError(f"coral.top_groups={groups}: the draft has {net.num_groups} groups")
        edges = net.bounds()
        smallest = net.always_on + groups * min(b - a for a, b in zip(edges[1:], edges[2:]))
        if groups and smallest < self.options.top_k:
            raise UserError(f"coral.top_groups={groups} scores {smallest} tokens, fewer than top_k={self.options.top_k}")
        # The LM head's rows in layout order, so each segment is one contiguous matrix product.
        head = target.lm_head
        weight = head.weight.detach()[net.token_order].contiguous()
        bias = head.bias.detach()[net.token_order] if getattr(head, "bias", None) is not None else None
        self.segments = [(weight[a:b], None if bias is None else bias[a:b], net.token_order[a:b])
                         for a, b in zip(edges, edges[1:])]

    def top_tokens(self, features: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Score the always-on set and the level's ``top_groups`` groups only (router mass summed over nodes)."""
        if not self.options.top_groups:
            return super().top_tokens(features, k)
        mass = self.net.router(features).float().softmax(-1).sum(0)
        chosen = [0, *(mass.topk(self.options.top_groups).indices.sort().values + 1).tolist()]
        logits = torch.cat([F.linear(features, self.segments[s][0], self.segments[s][1]) for s in chosen], dim=-1)
        ids = torch.cat([self.segments[s][2] for s in chosen])
        top = torch.log_softmax(logits.float(), dim=-1).topk(k)
        return top.values, ids[top.indices]

    # ---- checkpoints and training -----------------------------------------------------------------

    @classmethod
    def build_net(cls, target: Target, architecture: Mapping[str, Any] | None = None) -> nn.Module:
        """From a checkpoint's architecture; without one (``random``), defaults shrunk to fit small vocabularies."""
        arch = architecture or {}
        vocab = target.vocab_size
        always_on = arch.get("always_on", min(cls.loss_defaults.always_on, vocab // 8))
        num_groups = arch.get("num_groups", min(cls.loss_defaults.num_groups, (vocab - always_on) // 8))
        return cls.net_class(target.model, bias=arch.get("bias", True), num_groups=num_groups, always_on=always_on,
                             grouping=arch.get("grouping", "contiguous"))

    @classmethod
    def training_setup(cls, target: Target, data=None, **loss_overrides) -> tuple[nn.Module, EagleObjective]:
        loss = CoralLoss(**cls.loss_config(**loss_overrides))
        if loss.grouping not in GROUPINGS or loss.csra_pairs not in ("all", "anchor"):
            raise UserError(f"coral: grouping must be one of {', '.join(GROUPINGS)} and csra_pairs all or anchor")
        net = cls.net_class(target.model, num_groups=loss.num_groups, always_on=loss.always_on, grouping=loss.grouping)
        counts = answer_token_counts(data, net.config.vocab_size)
        net.token_order.copy_(build_token_order(target.lm_head.weight.detach().cpu(), counts, loss.num_groups,
                                                loss.always_on, loss.grouping))
        net = net.to(device=target.device, dtype=torch.float32)
        return net, cls.objective_class(target.embed, target.lm_head, loss)

    @classmethod
    def fresh_keys(cls, net: nn.Module) -> list[str]:
        """An EAGLE-2 or HASS draft lacks the router and the layout (which training_setup just built)."""
        return [k for k in net.state_dict() if k.startswith(("router.", "token_order"))]

    @classmethod
    def architecture(cls, net: nn.Module) -> dict:
        return {"bias": net.fc.bias is not None, "num_groups": net.num_groups, "always_on": net.always_on,
                "grouping": net.grouping}

    @classmethod
    def export(cls, net: nn.Module, target: Target, out: Path, flavor: str,
               dtype: torch.dtype = torch.float16) -> Path:
        """The draft body in the EAGLE layout. No engine has the grouped head, so the router is left out and
        an engine drafts from the whole vocabulary: exactly ``coral-fullhead``, not ``coral``."""
        body = {k: v for k, v in net.state_dict().items() if not k.startswith(("router.", "token_order"))}
        return eagle_io.export(body, target, Path(out), flavor, dtype)


@dataclass(frozen=True)
class FullHeadOptions(CoralOptions):
    top_groups: int = 0


@METHODS.register("coral-fullhead")
class CoralFullHead(Coral):
    summary = "CORAL ablation: the committed CORAL draft scoring the whole vocabulary (no LM-head grouping)"
    Options = FullHeadOptions
    accepts = Accepts(run=("coral",), warm_start=Coral.accepts.warm_start)

    @classmethod
    def default_checkpoint(cls, target: Target) -> Path:
        return Coral.default_checkpoint(target)
