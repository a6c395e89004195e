"""Which keys each attention layer of a target may see, so tree forwards mask every layer as its type needs.

A tree forward feeds N draft nodes at once with an explicit mask; without one, a model builds its own
masks. Many families mix layer types: Gemma 2/3, gpt-oss, Cohere 2 and Qwen2/3 configs with
``use_sliding_window`` alternate full layers with sliding-window layers, and Mistral v0.1, Phi-3,
Mixtral and Qwen3-MoE window every layer. A sliding layer at query position q attends only to keys
at positions k with ``q - window < k <= q`` (transformers' ``sliding_window_overlay`` in
``masking_utils.py``). Our mask must make the same cut, counted in positions (committed length +
node depth), not in cache slots: a prefix-plus-ancestors mask for every layer is exact on
full-attention models only, and on a windowed model it lets tree nodes see beyond the window, so
verified logits differ from vanilla's one-token steps (which use the model's own masks).

Mask forms: models whose config lists ``layer_types`` take a mapping {layer type: 4-D mask}
(``isinstance(attention_mask, dict)`` in their forward); the others take one 4-D mask, windowed when
``config.sliding_window`` is set. Layer types other than full and sliding attention (state-space,
linear or chunked attention) cannot be rolled back or masked here and are refused at load.
Families whose masks follow another rule are caught by the target self-check (harness/selfcheck.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from harness.errors import UserError

FULL, SLIDING = "full_attention", "sliding_attention"
# Model types whose layers carry recurrent state (no per-position KV to drop after a rejection).
STATEFUL_MODEL_TYPES = frozenset({
    "mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "zamba2", "bamba", "falcon_h1",
    "granitemoehybrid", "lfm2", "lfm2_moe", "qwen3_next", "nemotron_h", "recurrent_gemma", "xlstm", "minimax",
})


@dataclass(frozen=True)
class AttentionLayout:
    """Layer type -> sliding window (None: full attention), and whether the model takes a mask per type."""
    windows: dict[str, int | None]
    per_type: bool

    @classmethod
    def of(cls, config) -> "AttentionLayout":
        """The layout a config declares; a family the tree verifier cannot serve is refused with the reason."""
        model_type = getattr(config, "model_type", "?")
        if model_type in STATEFUL_MODEL_TYPES:
            raise UserError(f"target family {model_type!r} keeps recurrent (state-space or linear-attention) "
                            f"state, which cannot be rolled back after a rejected draft: not supported")
        if getattr(config, "attention_chunk_size", None):
            raise UserError(f"target family {model_type!r} uses chunked attention, which the tree masks do not "
                            f"model: not supported")
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if layer_types:
            unknown = sorted(set(layer_types) - {FULL, SLIDING})
            if unknown:
                raise UserError(f"target family {model_type!r} has layer types {', '.join(unknown)}, which the "
                                f"tree verifier cannot mask or roll back: not supported")
            if SLIDING in layer_types and not window:
                raise UserError(f"target {model_type!r} declares sliding-attention layers but no sliding_window")
            return cls({kind: (window if kind == SLIDING else None) for kind in set(layer_types)}, per_type=True)
        return cls({SLIDING if window else FULL: window or None}, per_type=False)

    @property
    def windowed(self) -> bool:
        return any(w is not None for w in self.windows.values())

    @property
    def longest_window(self) -> int:
        return max((w for w in self.windows.values() if w is not None), default=0)

    def masks(self, allowed: Tensor, query_positions: Tensor, key_positions: Tensor) -> Tensor | dict[str, Tensor]:
        """allowed [1, 1, q, k] (True = may attend, for a full layer) cut to each layer type's window, with
        query_positions [q] and key_positions [k] the rotary positions of rows and key slots."""
        out = {}
        for kind, window in self.windows.items():
            if window is None:
                out[kind] = allowed
            else:
                near = key_positions[None, :] > query_positions[:, None] - window
                out[kind] = allowed & near
        return out if self.per_type else next(iter(out.values()))
