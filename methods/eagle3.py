"""EAGLE-3: fused low/mid/high target features, no feature regression, a reduced draft vocabulary.

Network (SafeAILab/EAGLE@cb7e084 ``eagle/model/cnets.py`` ``Model`` and ``LlamaDecoderLayeremb``; the
trainer's copy ``eagle/traineagle3/cnets.py`` is the same network; docs/reference.md §1.9, arXiv 2503.01840):

- the target's hidden states at the *inputs* of decoder layers 2, N//2 and N-3 (``eagle3_layers`` in
  harness/train/datagen.py; taps are layer outputs, so ``Eagle3.taps`` are those layers - 1),
  concatenated (3H) and projected by ``fc`` (3H -> H, no bias);
- one Llama decoder layer ``midlayer`` whose attention input is [input_layernorm(e(x_{t+1})),
  hidden_norm(h_t)] (2H wide: q/k/v read 2H, o_proj writes H); the residual is h_t itself (before
  hidden_norm), then post_attention_layernorm and the MLP as in Llama;
- its own final ``norm`` and ``lm_head`` over the V_d draft tokens; ``d2t`` [V_d] holds offsets
  (target id = i + d2t[i]) and ``t2d`` [V] is a bool mask of the target ids in the draft vocabulary.

The layer is always Llama's (as EAGLE-3's and the engines' drafts are), built from the target's sizes and
rope settings, whatever the target family. Tree levels past the first feed the layer's own output (before
``norm``) back as h, without ``fc`` (cnets.py ``topK_genrate``: ``input_hidden = out_hidden[:, out_ids]``).
The tree is EAGLE-2's (methods/eagle2.py), with each draft-vocabulary top-k mapped to target ids, so a
token outside the draft vocabulary is never drafted; the shared verifier is unchanged, so the output is
the target's. Defaults 60 tokens / depth 7 / top-k 10 are the EAGLE-3-era ``ea_model.py@cb7e084``
defaults (docs/reference.md §2; EAGLE issue #209: depth 5 undersells EAGLE-3). Training (training-time test,
the frequency-ranked draft vocabulary) is in methods/_eagle3_train.py; the released / vLLM / SGLang
checkpoint layout in methods/_eagle3_io.py; docs/methods.md has the eagle3 section.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from harness.drafter import METHODS
from harness.errors import UserError
from harness.kvcache import cache_keyword
from harness.learned import Accepts
from harness.target import Target, TargetOut
from harness.train.datagen import eagle3_layers
from harness.tree import DraftTree
from harness.verify import Verdict
from methods import _eagle3_io as eagle3_io
from methods._eagle3_train import (DEFAULT_DRAFT_VOCAB, Eagle3Loss, Eagle3Objective, data_layers, draft_vocabulary,
                                   fused_layers)
from methods.eagle2 import Eagle2, EagleOptions


@dataclass(frozen=True)
class Eagle3Options(EagleOptions):
    total_tokens: int = 60
    depth: int = 7
    top_k: int = 10


def draft_layer_config(target_config) -> LlamaConfig:
    """A one-layer LlamaConfig with the target's sizes, norm epsilon and (full-attention) rope settings."""
    hidden, heads = target_config.hidden_size, target_config.num_attention_heads
    rope = getattr(target_config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:   # families with one rope per layer type
        rope = rope["full_attention"]
    config = LlamaConfig(vocab_size=target_config.vocab_size, hidden_size=hidden,
                         intermediate_size=target_config.intermediate_size, num_hidden_layers=1,
                         num_attention_heads=heads,
                         num_key_value_heads=getattr(target_config, "num_key_value_heads", None) or heads,
                         head_dim=getattr(target_config, "head_dim", None) or hidden // heads,
                         hidden_act=getattr(target_config, "hidden_act", "silu"),
                         rms_norm_eps=getattr(target_config, "rms_norm_eps", 1e-6),
                         max_position_embeddings=target_config.max_position_embeddings,
                         rope_parameters=dict(rope) if rope else None, attention_bias=False, mlp_bias=False)
    config._attn_implementation = "sdpa"
    return config


class Eagle3Layer(nn.Module):
    """cnets.py ``LlamaDecoderLayeremb``: attention over [input_layernorm(e), hidden_norm(h)] (2H), residual h."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.self_attn = LlamaAttention(config, layer_idx=0)
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(self.self_attn, name)
            setattr(self.self_attn, name, nn.Linear(2 * hidden, old.out_features, bias=False))
        self.mlp = LlamaMLP(config)
        self.hidden_norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.input_layernorm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.cache_keyword = cache_keyword(self.self_attn.forward)

    def forward(self, embeds: Tensor, hidden: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor, cache=None) -> Tensor:
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        attended, _ = self.self_attn(x, position_embeddings=rope, attention_mask=mask, **{self.cache_keyword: cache})
        hidden = hidden + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Net(nn.Module):
    """fc (fused taps -> H), midlayer, norm, lm_head over the draft vocabulary, and the d2t / t2d maps.

    ``forward`` takes H-wide h (``fuse`` of the target's taps, or the net's own earlier output) and returns
    the layer output before ``norm``; ``head`` applies norm and lm_head (draft-vocabulary logits)."""

    def __init__(self, target_model: nn.Module, vocab: Tensor, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.config = draft_layer_config(target_model.config)
        hidden, target_vocab = self.config.hidden_size, target_model.get_output_embeddings().weight.shape[0]
        self.layers = tuple(int(i) for i in layers)
        self.fc = nn.Linear(len(self.layers) * hidden, hidden, bias=False)
        self.midlayer = Eagle3Layer(self.config)
        self.norm = LlamaRMSNorm(hidden, eps=self.config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, vocab.shape[0], bias=False)
        self.rotary = LlamaRotaryEmbedding(config=self.config)
        d2t, t2d = vocab_maps(vocab, target_vocab)
        self.register_buffer("d2t", d2t)
        self.register_buffer("t2d", t2d)

    @property
    def draft_vocab_size(self) -> int:
        return self.lm_head.out_features

    def fuse(self, taps: tuple[Tensor, ...] | Tensor) -> Tensor:
        """The target's layer inputs ([n, H] each, or already concatenated [.., k*H]) -> h [.., H]."""
        fused = torch.cat(taps, dim=-1) if isinstance(taps, (tuple, list)) else taps
        return self.fc(fused.to(self.fc.weight.dtype))

    def forward(self, embeds: Tensor, hidden: Tensor, positions: Tensor, mask: Tensor, cache=None) -> Tensor:
        """embeds, hidden: [B, n, H]; positions [B, n]; mask [B, 1, n, kv] additive -> [B, n, H]."""
        hidden = hidden.to(embeds.dtype)
        return self.midlayer(embeds, hidden, self.rotary(hidden, positions), mask, cache)

    def head(self, out: Tensor) -> Tensor:
        return self.lm_head(self.norm(out))

    @torch.no_grad()
    def start_head_from(self, target_model: nn.Module) -> None:
        """lm_head := the target's output rows of the draft vocabulary, norm := the target's final norm, so the
        untrained head reads the draft's output as the target reads its last hidden state (``head_init=target``;
        not in the reference, which starts from a fresh nn.Linear)."""
        weight = target_model.get_output_embeddings().weight
        self.lm_head.weight.copy_(weight[self.target_ids().to(weight.device)])
        self.norm.weight.copy_(target_model.get_decoder().norm.weight)

    def split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """(what the head reads, what the next level is fed): the same pre-norm output."""
        return out, out

    def to_target(self, draft_ids: Tensor) -> Tensor:
        return draft_ids + self.d2t[draft_ids]

    def target_ids(self) -> Tensor:
        """The target id of each row of the draft head, in row order."""
        return self.to_target(torch.arange(self.draft_vocab_size, device=self.d2t.device))


def vocab_maps(vocab: Tensor, target_vocab: int) -> tuple[Tensor, Tensor]:
    """Sorted target ids of the draft vocabulary -> (d2t offsets [V_d] long, t2d mask [V] bool), as
    eagle/traineagle3/cnets.py ``scandata`` defines them."""
    vocab = vocab.long().sort().values
    t2d = torch.zeros(target_vocab, dtype=torch.bool)
    t2d[vocab] = True
    return vocab - torch.arange(vocab.shape[0]), t2d


def carried_head(head: Tensor, ids: Tensor, new_ids: Tensor, target_head: Tensor) -> tuple[Tensor, int]:
    """Head rows for the draft vocabulary ``new_ids`` from a trained ``head`` over ``ids`` (target ids, row
    order): a token both hold keeps its trained row; any other starts as the target's output row of that
    token through the linear map that best turns the target's rows into the trained ones (least squares
    over the shared tokens), so it scores in the space the trained rows score in. Returns (rows, shared)."""
    row_of = {token: row for row, token in enumerate(ids.tolist())}
    shared = [(new, row_of[token]) for new, token in enumerate(new_ids.tolist()) if token in row_of]
    if not shared:
        raise UserError("the --init draft's vocabulary shares no token with this run's: nothing to carry over")
    new_rows, old_rows = (torch.tensor(rows) for rows in zip(*shared))
    trained = head[old_rows].float()
    rows = target_head[new_ids] @ torch.linalg.lstsq(target_head[new_ids[new_rows]], trained).solution
    rows[new_rows] = trained
    return rows, len(shared)


def draft_ids_of(d2t: Tensor) -> Tensor:
    """The target ids of the draft vocabulary, in draft order (inverse of ``vocab_maps``)."""
    return torch.arange(d2t.shape[0], device=d2t.device) + d2t


@METHODS.register("eagle3", "eagle-3")
class Eagle3(Eagle2):
    summary = "EAGLE-3: fused low/mid/high features, draft vocabulary, training-time test (needs a checkpoint)"
    Options = Eagle3Options
    net_class = Eagle3Net

    def __init__(self, target: Target, checkpoint: str | None = None, **options) -> None:
        super().__init__(target, checkpoint, **options)
        if self.options.top_k > self.net.draft_vocab_size:
            raise UserError(f"eagle3.top_k={self.options.top_k} exceeds the draft vocabulary "
                            f"({self.net.draft_vocab_size} tokens)")
        # Taps are layer outputs; EAGLE-3 reads layer inputs (input of 0 = embeddings, index -1).
        self.taps = tuple(i - 1 for i in self.net.layers)

    # ---- drafting: EAGLE-2's tree over fused features and a draft-vocabulary head -----------------------

    def start(self, prompt: Tensor, out: TargetOut, sampling) -> None:
        super().start(prompt, out, sampling)
        self.pending_features = self.fused(out)

    def accept(self, tree: DraftTree, verdict: Verdict, out: TargetOut) -> None:
        super().accept(tree, verdict, out)
        self.pending_features = self.fused(out, verdict.path.to(out.hidden.device))

    def fused(self, out: TargetOut, rows: Tensor | None = None) -> Tensor:
        """fc over the target's taps (at ``rows`` only: the accepted path of a tree forward)."""
        if len(out.taps) != len(self.net.layers):
            raise UserError(f"eagle3 needs the target's taps at layers {self.taps}, got {len(out.taps)}")
        return self.net.fuse(out.taps if rows is None else tuple(tap[rows] for tap in out.taps))

    def top_tokens(self, features: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k of the draft-vocabulary distribution, as target ids (cnets.py: ``topk_index + d2t[topk_index]``)."""
        top = torch.log_softmax(self.net.head(features).float(), dim=-1).topk(k)
        return top.values, self.net.to_target(top.indices)

    # ---- the learned-drafter contract (harness/learned.py) ----------------------------------------

    loss_defaults: Eagle3Loss = Eagle3Loss()
    objective_class = Eagle3Objective
    # Its own drafts only (harness or released layout): EAGLE-2's network (eagle2, hass, coral) has no fused
    # fc, midlayer or draft-vocabulary head to start from.
    accepts = Accepts()

    @classmethod
    def build_net(cls, target: Target, architecture: Mapping[str, Any] | None = None) -> nn.Module:
        """From a checkpoint's ``architecture`` (draft vocabulary size, fused layers); without one (``random``),
        an untrained net over a random draft vocabulary of min(DEFAULT_DRAFT_VOCAB, V // 2) ids, so tests
        cover V_d < V."""
        arch = architecture or {}
        layers = tuple(arch.get("feature_layers") or eagle3_layers(target.config.num_hidden_layers))
        if "draft_vocab_size" in arch:
            vocab = torch.arange(int(arch["draft_vocab_size"]))   # placeholder: the checkpoint's d2t/t2d load over it
        else:
            vocab = torch.randperm(target.vocab_size)[:min(DEFAULT_DRAFT_VOCAB, target.vocab_size // 2)]
        return cls.net_class(target.model, vocab, layers)

    @classmethod
    def architecture(cls, net: nn.Module) -> dict:
        return {"draft_vocab_size": net.draft_vocab_size, "feature_layers": list(net.layers)}

    @classmethod
    def read_checkpoint(cls, where: Path, target: Target, also: tuple[str, ...]) -> tuple[dict[str, Tensor], dict]:
        """A harness checkpoint or a released EAGLE-3 folder (methods/_eagle3_io.py)."""
        return eagle3_io.read_checkpoint(where, cls.name, target.fingerprint(), target.config, also)

    @classmethod
    def training_setup(cls, target: Target, data=None, **loss_overrides) -> tuple[nn.Module, Eagle3Objective]:
        """The draft vocabulary is the V_d most frequent answer tokens of ``data``; the fused layers are the
        ones the data was made with (``datagen --feature-layers eagle3``) unless ``--loss layers`` picks others."""
        loss = Eagle3Loss(**cls.loss_config(**loss_overrides))
        stored = None
        if data is None:
            torch.manual_seed(0)
            net = cls.build_net(target)
        else:
            stored = data_layers(data, target.config.num_hidden_layers)
            layers = fused_layers(loss.layers, stored, target.config.num_hidden_layers)
            net = cls.net_class(target.model, draft_vocabulary(data, loss.draft_vocab, target.vocab_size), layers)
        if loss.head_init == "target":
            net.start_head_from(target.model)
        return net.to(device=target.device, dtype=torch.float32), cls.objective_class(target, loss, stored)

    @classmethod
    def adapt_warm_start(cls, net: nn.Module, tensors: dict[str, Tensor], target: Target,
                         loss: dict) -> dict[str, Tensor]:
        """An EAGLE-3 draft's weights as they are, its d2t / t2d replacing the vocabulary built from the data.
        A draft over another vocabulary size, or any with ``--loss vocab=data``, keeps the run's vocabulary
        and brings its head rows for the tokens both hold (``carried_head``), so a trained draft can grow or
        re-rank its vocabulary; a draft fusing another number of layers is refused with the fix."""
        d2t, fc = tensors.get("d2t"), tensors.get("fc.weight")
        if fc is not None and fc.shape != net.fc.weight.shape:
            raise UserError(f"the --init draft fuses {fc.shape[1] // net.config.hidden_size} target layers, this "
                            f"run's data {len(net.layers)} (datagen --feature-layers)")
        if d2t is None or (d2t.shape == net.d2t.shape and loss["vocab"] == "init"):
            return tensors
        head, shared = carried_head(tensors["lm_head.weight"], draft_ids_of(d2t), net.target_ids(),
                                    target.model.get_output_embeddings().weight.detach().float().cpu())
        print(f"eagle3 --init: draft vocabulary {d2t.shape[0]} -> {net.draft_vocab_size} tokens; {shared} head "
              f"rows carried over, {net.draft_vocab_size - shared} mapped from the target's output rows")
        return {**tensors, "lm_head.weight": head, "d2t": net.d2t, "t2d": net.t2d}

    @classmethod
    def export(cls, net: nn.Module, target: Target, out: Path, flavor: str,
               dtype: torch.dtype = torch.float16) -> Path:
        """The released EAGLE-3 layout, which the EAGLE repo, vLLM and SGLang read (methods/_eagle3_io.py)."""
        return eagle3_io.export(net, target, Path(out), flavor, dtype)
