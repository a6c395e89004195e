"""Target: the verified model, its tokenizer and its KV cache, and nothing else.

It runs forwards over new tokens with explicit positions and 4-D attention masks, one per layer type
where a family mixes full and sliding-window layers (harness/attention_layout.py), so tree verification
works on any Hugging Face decoder-only model whose attention takes a 4-D mask without copying a
modeling file (tested on 13 families: tests/test_families.py; every target is self-checked at load). It returns the logits and the features
drafters learn from: the final hidden states after the final norm (the input of the LM head), plus
any intermediate layers asked for with ``tap_layers``. It knows nothing about drafters or suites.
``compile_tree_forward`` switches tree scoring to padded fixed shapes (harness/static_shapes.py) and
optionally torch.compile; with ``mode="reduce-overhead"`` on a GPU that records CUDA graphs.
A target loaded with a device map (layers spread over GPUs by accelerate) gets one KV buffer per layer on
that layer's device, and hands its outputs back on its home device (the embedding's), where drafters live.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness import loading, static_shapes
from harness.attention_layout import AttentionLayout
from harness.errors import UserError
from harness.kvcache import SlotCache, cache_keyword
from harness.tree import DraftTree


@dataclass(frozen=True)
class TargetOut:
    logits: Tensor               # [n, V] float32: the next-token prediction at each fed position
    hidden: Tensor               # [n, H] final-norm features f_t at the same positions
    taps: tuple[Tensor, ...] = ()  # [n, H] each, outputs of the layers in Target.tap_layers


class Target:
    """Owns one model and one preallocated cache; batch size 1."""

    def __init__(self, model: nn.Module, tokenizer, *, model_id: str, source: str = "",
                 max_len: int | None = None, tap_layers: tuple[int, ...] = ()) -> None:
        config = model.config
        if not hasattr(model, "get_decoder") or model.get_output_embeddings() is None:
            raise UserError(f"target {model_id!r} is not a decoder-only causal LM")
        self.model = model.requires_grad_(False)   # drafters borrow its embedding and head, frozen
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.source = source
        self.config = config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_len = int(max_len or getattr(config, "max_position_embeddings", 4096))
        self.tap_layers = tuple(tap_layers)
        self.decoder = model.get_decoder()
        self.embed: nn.Embedding = model.get_input_embeddings()
        self.lm_head: nn.Linear = model.get_output_embeddings()
        # What the model's own head applies after lm_head: Cohere multiplies by logit_scale, Granite divides by
        # logits_scaling, Gemma 2/3 soft-cap. Any other rule is caught by the load-time self-check.
        self.logit_scale = float(getattr(config, "logit_scale", None) or 1.0) / float(
            getattr(config, "logits_scaling", None) or 1.0)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.layout = AttentionLayout.of(config)   # refuses families the tree verifier cannot serve
        # A device-mapped model keeps each layer's KV on that layer's device: no joint buffer on one device.
        self.device_mapped = bool(getattr(model, "hf_device_map", None))
        self.cache = SlotCache(config.num_hidden_layers, self.max_len, joint=not self.device_mapped)
        self._cache_keyword = cache_keyword(self.decoder.forward)
        self.length = 0   # committed tokens in the cache
        self.compile_mode = "off"
        self.bucket = 256
        self._fixed_forward = None

    @classmethod
    def load(cls, spec: str | None = None, *, dtype: str = "auto", device: str = "auto",
             max_len: int | None = None, tap_layers: tuple[int, ...] = (),
             device_map: str | dict | None = None) -> "Target":
        """``device_map``: accelerate's "auto" or "balanced" over the visible GPUs, or an explicit
        {module name: device}; without it the whole model moves to ``device``."""
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise UserError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
        loaded = loading.load(spec or loading.default_spec(), torch_dtype, device, device_map)
        return cls(loaded.model, loaded.tokenizer, model_id=loaded.model_id, source=loaded.source,
                   max_len=max_len, tap_layers=tap_layers)

    def compile_tree_forward(self, mode: str = "static", bucket: int = 256) -> None:
        """Score trees with fixed shapes: ``static`` runs them eagerly (to check the padding), any other
        mode compiles them with torch.compile(mode=...); ``off`` returns to exact-size eager forwards."""
        if mode not in static_shapes.COMPILE_MODES:
            raise UserError(f"unknown compile mode {mode!r} (use {', '.join(static_shapes.COMPILE_MODES)})")
        if bucket < 1:
            raise UserError("the attention window bucket must be a positive number of slots")
        self.compile_mode, self.bucket = mode, bucket
        self._fixed_forward = static_shapes.compiled(self._padded_forward, mode)

    def warm_up_fixed_shapes(self, tree_sizes: set[int], windows: int = 3) -> None:
        """Run fixed-shape forwards for these tree sizes at the first few window sizes, so the compiler's
        static and dynamic-shape graphs are built before anything is timed; leaves the cache empty."""
        if self._fixed_forward is None:
            return
        for padded in sorted({static_shapes.padded_size(n) for n in tree_sizes}):
            chain = DraftTree(torch.zeros(padded, dtype=torch.long), torch.arange(-1, padded - 1))
            for window in range(1, windows + 1):
                length = min(window * self.bucket, self.max_len) - padded
                if length < 1:
                    continue
                self.prefill(torch.zeros(1, dtype=torch.long))   # allocates the cache outside any graph
                self.length = length                             # the slots hold garbage: only shapes matter
                self.score_tree(chain)
        self.reset()

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.lm_head.weight.shape[1]

    def fingerprint(self) -> dict:
        """What a draft checkpoint must match: the target's vocabulary, width and identity."""
        return {"model_id": self.model_id, "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "num_layers": self.config.num_hidden_layers, "model_type": self.config.model_type}

    def reset(self) -> None:
        self.cache.reset()
        self.length = 0

    @torch.no_grad()
    def prefill(self, ids: Tensor) -> TargetOut:
        """Feed a prompt [T] into an empty cache; logits only for the last position ([1, V])."""
        self.reset()
        ids = ids.to(self.device).reshape(1, -1)
        if ids.shape[1] >= self.max_len:
            raise UserError(f"prompt of {ids.shape[1]} tokens does not fit max_len {self.max_len}")
        positions = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)
        out = self._forward(ids, positions, mask=None, logits_from=ids.shape[1] - 1)
        self.length = ids.shape[1]
        return out

    @torch.no_grad()
    def score_tree(self, tree: DraftTree) -> TargetOut:
        """One forward over all N tree nodes: each sees the committed prefix and its own ancestors."""
        n = tree.size
        if self.length + n > self.max_len:
            raise ContextFull(self.length + n, self.max_len)
        if self._fixed_forward is not None and self.length + static_shapes.padded_size(n) <= self.max_len:
            return self._score_fixed(tree)
        positions = (tree.depth.to(self.device) + self.length).unsqueeze(0)
        return self._forward(tree.tokens.to(self.device).unsqueeze(0), positions, self._tree_mask(tree), logits_from=0)

    def _tree_mask(self, tree: DraftTree) -> Tensor | dict[str, Tensor] | None:
        """[1, 1, N, L + N] per layer type: the committed prefix and the node's ancestors, cut to the window of
        sliding layers (harness/attention_layout.py). None for the root alone (plain causal attention, the
        model's own masks and fastest path); boolean for SDPA, which is faster than an additive mask on CPU
        (measured 54 vs 62 ms per token on SmolLM2); additive for other attention kernels."""
        if tree.size == 1:
            return None
        allowed = torch.ones(1, 1, tree.size, self.length + tree.size, dtype=torch.bool, device=self.device)
        allowed[0, 0, :, self.length:] = tree.ancestor_mask.to(self.device)
        if not self.layout.windowed:
            return self._for_attention(allowed)
        queries = tree.depth.to(self.device) + self.length
        keys = torch.cat([torch.arange(self.length, device=self.device), queries])
        return self._for_attention(self.layout.masks(allowed, queries, keys))

    def _for_attention(self, allowed: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """Boolean masks (True = may attend) as the attention kernel wants them: as is for SDPA, else additive."""
        if isinstance(allowed, dict):
            return {kind: self._for_attention(mask) for kind, mask in allowed.items()}
        if self.config._attn_implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(
            ~allowed, torch.finfo(self.dtype).min)

    def _score_fixed(self, tree: DraftTree) -> TargetOut:
        step = static_shapes.tree_step(tree, self.length, self.bucket, self.max_len, self.device)
        self.cache.mark_static_addresses()
        try:
            mask = step.mask if not self.layout.windowed else self.layout.masks(step.mask, step.positions[0],
                                                                                 step.key_positions)
            hidden, logits, taps = self._fixed_forward(step.ids, step.positions, self._for_attention(mask),
                                                       step.write_at)
        finally:
            self.cache.write_at(None)
        n = step.nodes
        # CUDA-graph outputs live in memory the next replay overwrites: keep copies of the real rows.
        return TargetOut(logits=logits[:n].clone(), hidden=hidden[:n].clone(), taps=tuple(t[:n].clone() for t in taps))

    def _padded_forward(self, ids: Tensor, positions: Tensor, mask: Tensor | dict[str, Tensor],
                        write_at: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """The traced function of fixed-shape scoring: every input is a tensor of a fixed shape."""
        window = next(iter(mask.values())) if isinstance(mask, dict) else mask
        self.cache.write_at(write_at, window.shape[-1])
        out = self._forward(ids, positions, mask, logits_from=0)
        return out.hidden, out.logits, out.taps

    def use_taps(self, layers: tuple[int, ...]) -> None:
        """The layers whose outputs the next forwards return as ``taps`` (what the turn's drafter reads)."""
        self.tap_layers = tuple(layers)

    def commit(self, path: Tensor) -> None:
        """Keep the KV of the tree nodes on path ([a+1] node ids, ascending) after the committed prefix."""
        in_place = path.tolist() == list(range(path.shape[0]))   # checked here, on the host, once
        self.cache.keep(self.length, path.to(self.device), in_place=in_place)
        self.length += path.shape[0]

    def _forward(self, ids: Tensor, positions: Tensor, mask: Tensor | dict[str, Tensor] | None,
                 logits_from: int) -> TargetOut:
        want_taps = bool(self.tap_layers)
        out = self.decoder(input_ids=ids, position_ids=positions, attention_mask=mask,
                           use_cache=True, output_hidden_states=want_taps, **{self._cache_keyword: self.cache})
        hidden = out.last_hidden_state[0].to(self.device)   # no-op unless the last layer sits elsewhere
        logits = self.lm_head(hidden[logits_from:]).float().to(self.device)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        taps = tuple(out.hidden_states[i + 1][0].to(self.device) for i in self.tap_layers) if want_taps else ()
        return TargetOut(logits=logits, hidden=hidden, taps=taps)


class ContextFull(Exception):
    """The next forward would exceed the cache: generation stops with reason ``max_len``."""

    def __init__(self, needed: int, max_len: int) -> None:
        super().__init__(f"{needed} positions needed, max_len is {max_len}")
