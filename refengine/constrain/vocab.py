"""The vocabulary as the constrainer sees it: each token's exact bytes, and a byte trie over them.

The trie is laid out level by level (all depth-1 nodes, then all depth-2 nodes, ...), children of one node
contiguous, so a walk from a DFA state advances a whole frontier of nodes per level with numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class Vocab:
    """Compared and hashed by identity (a compiled-constraint cache key part)."""
    token_bytes: tuple[bytes, ...]
    eos_ids: frozenset[int]
    special_ids: frozenset[int] = frozenset()

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "Vocab":
        """From `refengine.tokenizer.Tokenizer` (token_bytes, special_ids, eos_ids or its EOS string)."""
        eos_ids = getattr(tokenizer, "eos_ids", None)
        if eos_ids is None:
            eos = tokenizer.token_id(tokenizer.special.eos) if tokenizer.special.eos else None
            eos_ids = frozenset() if eos is None else frozenset({eos})
        return cls(tuple(tokenizer.token_bytes), frozenset(eos_ids), frozenset(tokenizer.special_ids))

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @cached_property
    def trie(self) -> "Trie":
        # cached_property writes into the instance __dict__, which a frozen dataclass still has
        return Trie.build(self)


@dataclass(frozen=True, eq=False)
class Trie:
    byte: np.ndarray           # [N] uint8: the byte leading into each node
    parent: np.ndarray         # [N] int64: parent node id (-1 for depth-1 nodes)
    child_start: np.ndarray    # [N] int64: first child (children are contiguous, on the next level)
    child_count: np.ndarray    # [N] int64
    levels: tuple              # (start, end) node id range of each depth, depth 1 first
    token_node: np.ndarray     # [T] int64: the node each (non-special) token ends at, by increasing token id
    token_ids: np.ndarray      # [T] int32: increasing

    @classmethod
    def build(cls, vocab: Vocab) -> "Trie":
        excluded = vocab.special_ids | vocab.eos_ids
        tokens = [(i, data) for i, data in enumerate(vocab.token_bytes) if data and i not in excluded]
        prefixes = {data[:k] for _, data in tokens for k in range(1, len(data) + 1)}
        order = sorted(prefixes, key=lambda p: (len(p), p))       # level by level
        node_of = {p: i for i, p in enumerate(order)}
        lengths = np.array([len(p) for p in order])
        starts = np.searchsorted(lengths, np.arange(1, lengths.max() + 2))
        parent = np.array([node_of[p[:-1]] if len(p) > 1 else -1 for p in order], dtype=np.int64)
        has_parent = parent >= 0
        child_count = np.bincount(parent[has_parent], minlength=len(order))
        child_start = np.full(len(order), len(order), dtype=np.int64)
        np.minimum.at(child_start, parent[has_parent], np.nonzero(has_parent)[0])
        return cls(byte=np.array([p[-1] for p in order], dtype=np.uint8), parent=parent,
                   child_start=child_start, child_count=child_count,
                   levels=tuple(zip(starts[:-1].tolist(), starts[1:].tolist())),
                   token_node=np.array([node_of[data] for _, data in tokens], dtype=np.int64),
                   token_ids=np.array([i for i, _ in tokens], dtype=np.int32))
