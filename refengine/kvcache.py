"""The KV cache of one sequence: keys and values of every position seen so far, for every layer.

Preallocated for the sequence's whole life (prompt + max new tokens), so a decode step writes one row in
place instead of concatenating. The forward pass writes a step's rows at [length, length + T) in each layer,
then `advance(T)` once the step is done, so all layers of one step see the same `length`.
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, capacity: int, xp=np):
        shape = (config.num_layers, config.num_kv_heads, capacity, config.head_dim)
        self.keys = xp.empty(shape, dtype=xp.float32)      # [L, Hkv, capacity, hd]
        self.values = xp.empty(shape, dtype=xp.float32)    # [L, Hkv, capacity, hd]
        self.length = 0
        self._xp = xp

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def reserve(self, extra: int) -> None:
        """Make room for `extra` more positions, doubling the allocation when it runs out."""
        needed = self.length + extra
        if needed > self.capacity:
            self.keys, self.values = self._resized(max(needed, 2 * self.capacity))

    def _resized(self, capacity: int) -> tuple:
        """New arrays of `capacity` positions holding a copy of the filled ones."""
        shape = self.keys.shape[:2] + (capacity,) + self.keys.shape[3:]
        keys, values = self._xp.empty(shape, dtype=self.keys.dtype), self._xp.empty(shape, dtype=self.keys.dtype)
        keys[:, :, :self.length] = self.keys[:, :, :self.length]
        values[:, :, :self.length] = self.values[:, :, :self.length]
        return keys, values

    def write(self, layer: int, keys, values) -> tuple:
        """Store a step's keys/values [Hkv, T, hd]; return this layer's keys/values up to the step's end."""
        end = self.length + keys.shape[1]
        self.keys[layer, :, self.length:end] = keys
        self.values[layer, :, self.length:end] = values
        return self.keys[layer, :, :end], self.values[layer, :, :end]   # [Hkv, S, hd] each, views

    def advance(self, steps: int) -> None:
        self.length += steps

    def fork(self, capacity: int | None = None) -> "KVCache":
        """An independent copy (for n choices sharing one prefill)."""
        copy = object.__new__(KVCache)
        copy._xp, copy.length = self._xp, self.length
        copy.keys, copy.values = self._resized(max(capacity or self.capacity, self.length))
        return copy
