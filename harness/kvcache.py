"""A preallocated KV cache that tree verification can write into and then compact.

Each layer owns buffers [B, H_kv, max_len, D] allocated once; when every layer has the same shape
(the usual case) they are views of one [layers, 2, B, H_kv, max_len, D] tensor, so compaction is
one gather and one copy for the whole model instead of two per layer. ``update`` (called by the
Hugging Face attention layers) writes the new keys after the valid range and returns views of the
valid range, so attention costs what the context needs, not max_len, and no step reallocates.
``keep`` compacts after verification: the accepted tree nodes are gathered and written to the slots
right after the committed prefix; the rest is left to be overwritten (docs/reference.md §2.9).
For fixed-shape (compiled) forwards, ``SlotCache.write_at`` switches ``update`` to writing at given
slot indices and returning a fixed window of slots, so no shape depends on the cache length.
Layers of a model spread over devices each keep their own buffers on their own device (``joint=False``),
and slot indices move to the layer's device.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from harness.errors import UserError


class SlotLayer(DynamicLayer):
    """One layer's preallocated keys and values; ``length`` counts the valid slots."""

    def __init__(self, max_len: int, shared: "SlotCache | None" = None, index: int = 0) -> None:
        super().__init__()
        self.max_len = max_len
        self.shared, self.index = shared, index   # the cache whose joint buffer this layer may live in
        self.in_joint = False
        self.length = 0
        self._keys: Tensor | None = None
        self._values: Tensor | None = None
        self.write_at: Tensor | None = None   # fixed-shape mode: slots of the new keys, and the window
        self.window = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, dim = key_states.shape
        joint = self.shared.joint_for(key_states, value_states) if self.shared is not None else None
        if joint is not None:
            self._keys, self._values, self.in_joint = joint[self.index, 0], joint[self.index, 1], True
        else:
            self._keys = key_states.new_zeros(batch, heads, self.max_len, dim)
            self._values = value_states.new_zeros(batch, heads, self.max_len, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.write_at is not None:
            slots = self.write_at.to(self._keys.device)
            self._keys.index_copy_(2, slots, key_states)
            self._values.index_copy_(2, slots, value_states)
            return self._keys[:, :, :self.window], self._values[:, :, :self.window]
        end = self.length + key_states.shape[-2]
        if end > self.max_len:
            raise UserError(f"context of {end} tokens exceeds the target's max_len {self.max_len}")
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_len

    def reset(self) -> None:
        self.length = 0

    def keep(self, start: int, index: Tensor, move: bool = True) -> None:
        """Keep slots start + index (ascending), moved to start, start+1, ...; drop everything after.
        ``move=False`` when index is 0..count-1 (already in place) or the caller moved the slots."""
        count = index.shape[0]
        if move and self._keys is not None:
            source = index.to(self._keys.device) + start
            # index_select copies first, so overlapping source and destination ranges are safe.
            self._keys[:, :, start:start + count] = self._keys.index_select(2, source)
            self._values[:, :, start:start + count] = self._values.index_select(2, source)
        self.length = start + count
        if self._keys is not None:
            self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]


class SlotCache(Cache):
    """A Hugging Face Cache made of SlotLayers, one per decoder layer."""

    def __init__(self, num_layers: int, max_len: int, joint: bool = True) -> None:
        """``joint=False``: every layer allocates its own buffers (a model spread over devices)."""
        super().__init__(layers=[SlotLayer(max_len, self if joint else None, i) for i in range(num_layers)])
        self.max_len = max_len
        self.static_addresses = False
        self.joint: Tensor | None = None   # [layers, 2, B, H_kv, max_len, D], allocated by the first layer

    def joint_for(self, key_states: Tensor, value_states: Tensor) -> Tensor | None:
        """The joint buffer if this layer's keys and values fit it (allocating it on first use), else None."""
        batch, heads, _, dim = key_states.shape
        shape = (len(self.layers), 2, batch, heads, self.max_len, dim)
        if value_states.shape[-1] != dim:
            return None
        if self.joint is None:
            self.joint = key_states.new_zeros(shape)
        fits = self.joint.shape == shape and self.joint.dtype == key_states.dtype
        return self.joint if fits and self.joint.device == key_states.device else None

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def keep(self, start: int, index: Tensor, in_place: bool = False) -> None:
        """Keep slots start + index (ascending) in every layer; in_place when index is 0..count-1."""
        count = index.shape[0]
        together = not in_place and count and all(layer.in_joint for layer in self.layers)
        if together:
            self.joint[:, :, :, :, start:start + count] = self.joint.index_select(4, index + start)
        for layer in self.layers:
            layer.keep(start, index, move=not (in_place or together or count == 0))

    def write_at(self, slots: Tensor | None, window: int = 0) -> None:
        """Fixed-shape mode for the next forwards (slots [P], attention over window slots); None ends it."""
        for layer in self.layers:
            layer.write_at, layer.window = slots, window

    def mark_static_addresses(self) -> None:
        """Tell torch.compile the buffers never move, so CUDA graphs may write into them (once: they are
        allocated by the first forward and never reallocated)."""
        if self.static_addresses or not all(layer.is_initialized for layer in self.layers):
            return
        for layer in self.layers:
            torch._dynamo.mark_static_address(layer._keys)
            torch._dynamo.mark_static_address(layer._values)
        self.static_addresses = True


def cache_keyword(forward) -> str:
    """The name under which a model or layer forward takes its cache: ``cache`` in transformers releases that
    renamed it (``past_key_values`` is deprecated there, to be removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
