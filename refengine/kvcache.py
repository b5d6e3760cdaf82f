"""The KV cache of one sequence: keys and values of every position seen so far, for every layer.

It grows a block of BLOCK positions at a time as tokens arrive (`reserve`), never past `max_length` when its
owner knows how long the sequence may get, so a request holds the KV of what it has read, not of the whole
context it might reach. Keys are stored transposed, [hd, positions] per head, so that attention's `q @ keys`
multiplies by a plain row-major matrix (numpy is several times slower on a transposed view). The forward
pass stores a step's rows at [length, length + T) in each layer, then `advance(T)` once the step is done,
so all layers of one step see the same `length`.

The n choices of one request share their prompt: each choice's cache is a `branch` of the prompt's cache,
which it reads as a read-only `shared` prefix (positions [0, start)) and after which it writes its own
tokens into its own arrays (positions [start, length)). So a cache's positions lie in one or two segments
(`read` returns them in order), and `nbytes` counts only the arrays a cache owns.
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig

# Positions added per growth. Growing copies what is filled, so a sequence of S positions is copied about
# S / BLOCK times over its life: with 256, that is under 0.5% of the reading attention does anyway (it reads
# all S positions every token), and the slack of a half-filled block is at most 255 positions (11.5 MB for
# SmolLM2-135M, 1/32 of its 8192-position context). It is also the scheduler's default prefill chunk, so a
# prompt read a chunk per step grows about once per chunk.
BLOCK = 256


class KVCache:
    def __init__(self, config: ModelConfig, capacity: int = 0, xp=np, *, dtype=np.float32,
                 max_length: int | None = None):
        L, Hkv, hd = config.num_layers, config.num_kv_heads, config.head_dim
        self.keys = xp.empty((L, Hkv, hd, capacity), dtype=dtype)      # [L, Hkv, hd, own capacity]
        self.values = xp.empty((L, Hkv, capacity, hd), dtype=dtype)    # [L, Hkv, own capacity, hd]
        self.shared: KVCache | None = None   # read-only cache holding positions [0, start), or None
        self.start = 0                       # the first position held in this cache's own arrays
        self.length = 0
        self.max_length = max_length         # positions it will ever hold, if known: growth stops there
        self.read_only = False               # set once a branch reads it
        self._xp = xp

    @property
    def capacity(self) -> int:
        """Positions it holds without growing (the shared prefix's included)."""
        return self.start + self.values.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this cache owns (not of a shared prefix, counted by its owner)."""
        return self.keys.nbytes + self.values.nbytes

    @property
    def bytes_per_position(self) -> int:
        L, Hkv, hd = self.keys.shape[:3]
        return L * Hkv * hd * 2 * self.keys.dtype.itemsize                 # keys + values

    def capacity_for(self, positions: int) -> int:
        """The capacity that holds `positions` in all: whole blocks of its own, but never past max_length."""
        own = positions - self.start
        blocks = -(-own // BLOCK) * BLOCK
        if self.max_length is not None:
            blocks = max(own, min(blocks, self.max_length - self.start))
        return self.start + blocks

    def reserve(self, extra: int) -> None:
        """Make room for `extra` more positions, growing by whole blocks when it runs out."""
        needed = self.length + extra
        if needed > self.capacity:
            self.keys, self.values = self._own_arrays(self.capacity_for(needed) - self.start)

    def _own_arrays(self, capacity: int) -> tuple:
        """New own arrays of `capacity` positions holding a copy of the filled ones."""
        filled = self.length - self.start
        L, Hkv, hd = self.keys.shape[:3]
        keys = self._xp.empty((L, Hkv, hd, capacity), dtype=self.keys.dtype)      # [L, Hkv, hd, capacity]
        values = self._xp.empty((L, Hkv, capacity, hd), dtype=self.values.dtype)  # [L, Hkv, capacity, hd]
        keys[..., :filled] = self.keys[..., :filled]
        values[:, :, :filled] = self.values[:, :, :filled]
        return keys, values

    def _segments(self, end: int) -> list:
        """Views of positions [0, end) in order, as (keys [L, Hkv, hd, S_j], values [L, Hkv, S_j, hd]) pairs:
        the shared prefix's, then this cache's own."""
        if self.shared is None:
            return [(self.keys[..., :end], self.values[:, :, :end])]
        segments = self.shared._segments(min(end, self.start))
        if end > self.start:
            segments.append((self.keys[..., :end - self.start], self.values[:, :, :end - self.start]))
        return segments

    def store(self, layer: int, keys, values) -> None:
        """Store a step's keys/values [T, Hkv, hd] of one layer at positions [length, length + T)."""
        if self.read_only:
            raise RuntimeError("this cache is shared by branches: it is read-only")
        at = self.length - self.start                                        # own index of the first new row
        end = at + keys.shape[0]
        self.keys[layer, :, :, at:end] = keys.transpose(1, 2, 0)      # [T, Hkv, hd] -> [Hkv, hd, T]
        self.values[layer, :, at:end] = values.transpose(1, 0, 2)     # [T, Hkv, hd] -> [Hkv, T, hd]

    def read(self, layer: int, end: int) -> list:
        """One layer's keys and values of positions [0, end) as one or two segments (keys [Hkv, hd, S_j],
        values [Hkv, S_j, hd]): views, no copy."""
        return [(k[layer], v[layer]) for k, v in self._segments(end)]

    def blocks(self, end: int) -> list:
        """Positions [0, end) as (keys [L, Hkv, hd, capacity], values [L, Hkv, capacity, hd], count) triples
        of whole arrays, the count first positions of each in use: what a kernel reads through pointers."""
        if self.shared is None:
            return [(self.keys, self.values, end)]
        blocks = self.shared.blocks(min(end, self.start))
        if end > self.start:
            blocks.append((self.keys, self.values, end - self.start))
        return blocks

    def advance(self, steps: int) -> None:
        self.length += steps

    def branch(self, max_length: int | None = None) -> "KVCache":
        """A cache that reads this one's positions as its shared prefix and writes the next ones into arrays
        of its own (each of n choices after one prompt). This cache is read-only from now on."""
        self.read_only = True
        branch = self._new(capacity=0, max_length=max_length)
        branch.shared, branch.start, branch.length = self, self.length, self.length
        return branch

    def fork(self, capacity: int | None = None, length: int | None = None, *,
             max_length: int | None = None) -> "KVCache":
        """An independent copy of the first `length` positions (default: all) in arrays of its own, a shared
        prefix's positions copied in too, with room for `capacity` (default: just those). The prefix cache
        stores an entry so, and a prompt starts from an entry so."""
        length = self.length if length is None else min(length, self.length)
        copy = self._new(capacity=max(capacity or 0, length), max_length=max_length)
        at = 0
        for keys, values in self._segments(length):                  # [L, Hkv, hd, S_j], [L, Hkv, S_j, hd]
            copy.keys[..., at:at + keys.shape[-1]] = keys
            copy.values[:, :, at:at + keys.shape[-1]] = values
            at += keys.shape[-1]
        copy.length = length
        return copy

    def _new(self, capacity: int, max_length: int | None) -> "KVCache":
        """An empty cache of this one's layers, heads, dtype and array module, with `capacity` positions."""
        new = object.__new__(KVCache)
        L, Hkv, hd = self.keys.shape[:3]
        new.keys = self._xp.empty((L, Hkv, hd, capacity), dtype=self.keys.dtype)       # [L, Hkv, hd, capacity]
        new.values = self._xp.empty((L, Hkv, capacity, hd), dtype=self.values.dtype)   # [L, Hkv, capacity, hd]
        new.shared, new.start, new.length, new.max_length, new.read_only = None, 0, 0, max_length, False
        new._xp = self._xp
        return new
