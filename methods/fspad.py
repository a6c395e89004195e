"""FSPAD (feature sampling and partial alignment distillation): EAGLE-2 with a wider draft network.

Sources: docs/reference.md §1.6 (Luc4Gui/FSPAD@1c2df5e ``cnets_fspad.py``, arXiv 2408.15562). Drafting,
the dynamic tree (60/5/10) and the loss weights are EAGLE-2's; the network changes in two places:

- feature sampling (FS, ``Efc``): h0 = fc([e; f]) (always with a bias), h = h0 + down(SiLU(gate(e)) *
  up(RMSNorm(h0))): the next token's embedding gates the fused feature in the intermediate space;
- partial alignment distillation (PAD): the decoder layer's MLP projects to 2H over a duplicated
  residual; the first half ("predict") goes to the target's frozen LM head, the second ("regress")
  is regressed to f_{t+1} and is the feature fed to the next draft level (``FspadNet.split``).

Loss (§1.6.2): v_w * SmoothL1(regress, f_{t+1}) + p_w * soft CE(head(predict)), single-step; the
shared objective in ``methods/_eagle_train.py`` applies it through ``split``. Ablations are variants
with their own names, so each is one command and its checkpoints rebuild the right net (the flags are
stored under ``architecture``)::

    python -m harness train --method fspad --data DIR --out DIR            # FS + PAD
    python -m harness train --method fspad-fs-only --data DIR --out DIR    # FS, single H output
    python -m harness train --method fspad-pad-only --data DIR --out DIR   # PAD over EAGLE's plain fc

Checkpoints load from our trainer's output or from the FSPAD layout (``config.json`` plus
``pytorch_model.bin`` or ``model.safetensors``: ``fc.fc.*``, ``fc.mlp.*``, ``fc.post_attention_layernorm``,
``layers.0.*`` with ``mlp.down_proj`` [2H, I]; ``embed_tokens.weight`` is ignored). The draft body is
built from the target's config, so a draft config with another intermediate size or head count does
not load. vLLM and SGLang have no FSPAD model class: FSPAD drafts are not exportable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from harness.drafter import METHODS
from harness.errors import UserError
from harness.kvcache import cache_keyword
from harness.target import Target
from methods.eagle2 import Eagle2, EagleNet


class FeatureSampling(nn.Module):
    """FSPAD's ``Efc``: fc([e; f]) refined by an MLP whose gate reads the token embedding."""

    def __init__(self, target_model: nn.Module) -> None:
        super().__init__()
        config = target_model.config
        decoder = target_model.get_decoder()
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=True)
        self.mlp = type(decoder.layers[0].mlp)(config)
        self.post_attention_layernorm = type(decoder.norm)(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, embeds: Tensor, features: Tensor) -> Tensor:
        h0 = self.fc(torch.cat([embeds, features], dim=-1))
        mlp = self.mlp
        return h0 + mlp.down_proj(mlp.act_fn(mlp.gate_proj(embeds)) * mlp.up_proj(self.post_attention_layernorm(h0)))


class ConcatLinear(nn.Linear):
    """EAGLE's plain fc over [e; f] (the PAD-only ablation), with FeatureSampling's call signature."""

    def forward(self, embeds: Tensor, features: Tensor) -> Tensor:
        return super().forward(torch.cat([embeds, features], dim=-1))


class FspadNet(EagleNet):
    """Efc (or EAGLE's fc) -> one decoder layer of the target's family, widened to 2H output under PAD."""

    def __init__(self, target_model: nn.Module, bias: bool = True, feature_sampling: bool = True,
                 partial_alignment: bool = True) -> None:
        super().__init__(target_model, bias=bias)
        hidden = self.config.hidden_size
        self.feature_sampling, self.partial_alignment = feature_sampling, partial_alignment
        if feature_sampling:
            self.fc = FeatureSampling(target_model)
        else:
            self.fc = ConcatLinear(2 * hidden, hidden, bias=bias)
        if partial_alignment:
            mlp = self.layers[0].mlp
            mlp.down_proj = nn.Linear(mlp.down_proj.in_features, 2 * hidden, bias=mlp.down_proj.bias is not None)

    def forward(self, embeds: Tensor, features: Tensor, positions: Tensor, mask: Tensor, cache=None) -> Tensor:
        """Like EagleNet.forward; the output is [B, n, 2H] (predict, regress) under PAD, else [B, n, H]."""
        x = self.fc(embeds, features.to(embeds.dtype))
        rope = self.rope(x, positions)
        layer = self.layers[0]
        if not self.partial_alignment:
            return layer(x, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                         position_embeddings=rope, **{self.cache_keyword: cache})
        # The family's own attention; the residual is duplicated around the widened MLP.
        attended = x + layer.self_attn(hidden_states=x, attention_mask=mask, position_ids=positions,
                                       position_embeddings=rope, **{cache_keyword(layer.self_attn.forward): cache})[0]
        return torch.cat([attended, attended], dim=-1) + layer.mlp(layer.post_attention_layernorm(attended))

    def split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        if not self.partial_alignment:
            return out, out
        hidden = self.config.hidden_size
        return out[..., :hidden], out[..., hidden:]


@METHODS.register("fspad")
class Fspad(Eagle2):
    summary = "FSPAD: EAGLE-2 drafting with feature sampling and partial alignment distillation (needs a checkpoint)"
    net_class = FspadNet
    feature_sampling = True
    partial_alignment = True

    @classmethod
    def build_net(cls, target: Target, architecture: Mapping[str, Any] | None = None) -> nn.Module:
        """Flags from the checkpoint's ``architecture``; a released FSPAD-layout draft has none: the class's."""
        arch = architecture or {}
        return cls.net_class(target.model, bias=arch.get("bias", True),
                             feature_sampling=arch.get("feature_sampling", cls.feature_sampling),
                             partial_alignment=arch.get("partial_alignment", cls.partial_alignment))

    @classmethod
    def architecture(cls, net: nn.Module) -> dict:
        return {"bias": net.feature_sampling or net.fc.bias is not None,   # Efc's fc always has a bias
                "feature_sampling": net.feature_sampling, "partial_alignment": net.partial_alignment}

    @classmethod
    def adapt_warm_start(cls, net: nn.Module, tensors: dict[str, Tensor], target: Target,
                         loss: dict) -> dict[str, Tensor]:
        """EAGLE-2-network weights (an eagle2/hass/coral draft) -> this net, computing the same function at the
        start: FS's fc is EAGLE's fc and its gated residual starts at zero (``fc.mlp.down_proj`` = 0); PAD's
        2H-wide ``down_proj`` is EAGLE's stacked twice, so both halves start as EAGLE's output."""
        own = net.state_dict()
        if all(key in own and own[key].shape == value.shape for key, value in tensors.items()):
            return tensors                                      # a checkpoint of this very net (e.g. stage 2)
        state = {k: v for k, v in tensors.items() if not k.startswith("fc.")}
        fc = {k.removeprefix("fc."): v for k, v in tensors.items() if k.startswith("fc.")}
        if net.feature_sampling:
            state.update({f"fc.fc.{k}": v for k, v in fc.items()})
            state["fc.mlp.down_proj.weight"] = torch.zeros_like(net.fc.mlp.down_proj.weight)
        else:
            state.update({f"fc.{k}": v for k, v in fc.items()})
        if net.partial_alignment:
            down = state["layers.0.mlp.down_proj.weight"]
            state["layers.0.mlp.down_proj.weight"] = torch.cat([down, down], dim=0)
        return state

    @classmethod
    def fresh_keys(cls, net: nn.Module) -> list[str]:
        return [k for k in net.state_dict() if k.startswith(("fc.mlp.", "fc.post_attention_layernorm.", "fc.fc.bias"))]

    @classmethod
    def export(cls, net: nn.Module, target: Target, out: Path, flavor: str,
               dtype: torch.dtype = torch.float16) -> Path:
        raise UserError(f"{cls.name} drafts cannot be exported: vLLM and SGLang have no FSPAD model class "
                        f"(docs/reference.md §1.6.1); use them with this harness")


@METHODS.register("fspad-fs-only")
class FspadFeatureSamplingOnly(Fspad):
    summary = "FSPAD ablation: feature sampling only (single H output), EAGLE-2 drafting"
    partial_alignment = False


@METHODS.register("fspad-pad-only")
class FspadPartialAlignmentOnly(Fspad):
    summary = "FSPAD ablation: partial alignment distillation only (EAGLE's plain fc), EAGLE-2 drafting"
    feature_sampling = False
