"""The KV cache of one sequence: keys and values of every position seen so far, for every layer.

Preallocated for the sequence's whole life (prompt + max new tokens), so a decode step writes one position
in place instead of concatenating. Keys are stored transposed, [hd, positions] per head, so that attention's
`q @ keys` multiplies by a plain row-major matrix (numpy is several times slower on a transposed view). The forward pass writes a step's rows at [length, length + T) in each layer,
then `advance(T)` once the step is done, so all layers of one step see the same `length`.
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, capacity: int, xp=np):
        L, Hkv, hd = config.num_layers, config.num_kv_heads, config.head_dim
        self.keys = xp.empty((L, Hkv, hd, capacity), dtype=xp.float32)     # [L, Hkv, hd, capacity]
        self.values = xp.empty((L, Hkv, capacity, hd), dtype=xp.float32)   # [L, Hkv, capacity, hd]
        self.length = 0
        self._xp = xp

    @property
    def capacity(self) -> int:
        return self.values.shape[2]

    def reserve(self, extra: int) -> None:
        """Make room for `extra` more positions, doubling the allocation when it runs out."""
        needed = self.length + extra
        if needed > self.capacity:
            self.keys, self.values = self._resized(max(needed, 2 * self.capacity))

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def _resized(self, capacity: int, length: int | None = None) -> tuple:
        """New arrays of `capacity` positions holding a copy of the first `length` (default: all filled)."""
        length = self.length if length is None else length
        L, Hkv, hd = self.keys.shape[:3]
        keys = self._xp.empty((L, Hkv, hd, capacity), dtype=self.keys.dtype)
        values = self._xp.empty((L, Hkv, capacity, hd), dtype=self.values.dtype)
        keys[..., :length] = self.keys[..., :length]
        values[:, :, :length] = self.values[:, :, :length]
        return keys, values

    def write(self, layer: int, keys, values) -> tuple:
        """Store a step's keys/values [T, Hkv, hd]; return this layer's keys [Hkv, hd, S] and values
        [Hkv, S, hd] up to the step's end (views, no copy)."""
        end = self.length + keys.shape[0]
        self.keys[layer, :, :, self.length:end] = keys.transpose(1, 2, 0)     # [T, Hkv, hd] -> [Hkv, hd, T]
        self.values[layer, :, self.length:end] = values.transpose(1, 0, 2)    # [T, Hkv, hd] -> [Hkv, T, hd]
        return self.keys[layer, :, :, :end], self.values[layer, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def fork(self, capacity: int | None = None, length: int | None = None) -> "KVCache":
        """An independent copy of the first `length` positions (default: all), with room for `capacity`
        (n choices sharing one prefill; a prompt reusing a cached prefix)."""
        length = self.length if length is None else min(length, self.length)
        copy = object.__new__(KVCache)
        copy._xp, copy.length = self._xp, length
        copy.keys, copy.values = self._resized(max(capacity or self.capacity, length), length)
        return copy
