"""A preallocated KV cache that tree verification can write into and then compact.

Each layer owns buffers [B, H_kv, max_len, D] allocated once. ``update`` (called by the Hugging Face
attention layers) writes the new keys after the valid range and returns views of the valid range,
so attention costs what the context needs, not max_len, and no step reallocates the cache.
``keep`` compacts after verification: the accepted tree nodes are gathered and written to the slots
right after the committed prefix; the rest is left to be overwritten (REFERENCE §2.9).
For fixed-shape (compiled) forwards, ``SlotCache.write_at`` switches ``update`` to writing at given
slot indices and returning a fixed window of slots, so no shape depends on the cache length.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from harness.errors import UserError


class SlotLayer(DynamicLayer):
    """One layer's preallocated keys and values; ``length`` counts the valid slots."""

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.length = 0
        self._keys: Tensor | None = None
        self._values: Tensor | None = None
        self.write_at: Tensor | None = None   # fixed-shape mode: slots of the new keys, and the window
        self.window = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, dim = key_states.shape
        self._keys = key_states.new_zeros(batch, heads, self.max_len, dim)
        self._values = value_states.new_zeros(batch, heads, self.max_len, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.write_at is not None:
            self._keys.index_copy_(2, self.write_at, key_states)
            self._values.index_copy_(2, self.write_at, value_states)
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

    def keep(self, start: int, index: Tensor) -> None:
        """Keep slots start + index (ascending), moved to start, start+1, ...; drop everything after."""
        count = index.shape[0]
        if self._keys is not None and not torch.equal(index, torch.arange(count, device=index.device)):
            source = index + start
            # index_select copies first, so overlapping source and destination ranges are safe.
            self._keys[:, :, start:start + count] = self._keys.index_select(2, source)
            self._values[:, :, start:start + count] = self._values.index_select(2, source)
        self.length = start + count
        if self._keys is not None:
            self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]


class SlotCache(Cache):
    """A Hugging Face Cache made of SlotLayers, one per decoder layer."""

    def __init__(self, num_layers: int, max_len: int) -> None:
        super().__init__(layers=[SlotLayer(max_len) for _ in range(num_layers)])
        self.static_addresses = False

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def keep(self, start: int, index: Tensor) -> None:
        for layer in self.layers:
            layer.keep(start, index)

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
