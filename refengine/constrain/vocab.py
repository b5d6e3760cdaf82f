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

    @cached_property
    def depth_first_trie(self) -> "DepthFirstTrie":
        return DepthFirstTrie.build(self)


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


@dataclass(frozen=True, eq=False)
class DepthFirstTrie:
    """The same trie in depth-first order (its prefixes sorted as bytes), for the compiled walk: the
    nodes of a node's subtree are the ones after it, up to `skip`, so a dead node's subtree is skipped in
    one jump."""
    byte: np.ndarray           # [N] uint8: the byte leading into each node
    depth: np.ndarray          # [N] int32: 1 for a token's first byte
    skip: np.ndarray           # [N] int32: the first node after this node's subtree
    token_start: np.ndarray    # [N + 1] int32: node i's tokens are token_ids[token_start[i]:token_start[i + 1]]
    token_ids: np.ndarray      # [T] int32: the (non-special) tokens, grouped by the node their bytes end at
    subtree_bytes: np.ndarray  # [N, 4] uint64: the set of bytes on the node's subtree (its own byte included)
    height: np.ndarray         # [N] int32: the levels of the node's subtree (1: a leaf)
    token_depth: np.ndarray    # [T] int32: the length of each of token_ids (its node's depth)
    node_token: np.ndarray     # [N] int32: the node's first token, or V (a scratch slot) where none ends there
    twins: np.ndarray          # [K, 2] int32: (token, an earlier token with the same bytes), rare
    max_depth: int             # the longest token's length in bytes
    plain_below: np.ndarray    # [N] bool: every token below, from the node's byte on, is plain string text

    @classmethod
    def build(cls, vocab: Vocab) -> "DepthFirstTrie":
        excluded = vocab.special_ids | vocab.eos_ids
        tokens_at: dict[bytes, list[int]] = {}
        for i, data in enumerate(vocab.token_bytes):
            if data and i not in excluded:
                tokens_at.setdefault(data, []).append(i)
        order = sorted({data[:k] for data in tokens_at for k in range(1, len(data) + 1)})
        skip = np.full(len(order), len(order), dtype=np.int32)
        parent = np.full(len(order), -1, dtype=np.int64)
        open_nodes: list[int] = []                      # the path to the current node: its ancestors
        for i, prefix in enumerate(order):
            while open_nodes and len(order[open_nodes[-1]]) >= len(prefix):
                skip[open_nodes.pop()] = i
            if open_nodes:
                parent[i] = open_nodes[-1]
            open_nodes.append(i)
        counts = [len(tokens_at.get(prefix, ())) for prefix in order]
        byte = np.array([p[-1] for p in order], dtype=np.uint8)
        subtree_bytes = np.zeros((len(order), 4), dtype=np.uint64)
        subtree_bytes[np.arange(len(order)), byte >> 6] = np.uint64(1) << (byte & 63).astype(np.uint64)
        depth = np.array([len(p) for p in order], dtype=np.int32)
        height = np.ones(len(order), dtype=np.int32)
        for d in range(int(depth.max()), 1, -1):        # each level's into their parents', deepest first
            nodes = np.flatnonzero(depth == d)
            np.bitwise_or.at(subtree_bytes, parent[nodes], subtree_bytes[nodes])
            np.maximum.at(height, parent[nodes], height[nodes] + 1)
        node_token = np.array([tokens_at[p][0] if p in tokens_at else vocab.size for p in order], dtype=np.int32)
        plain_below = np.ones(len(order), dtype=bool)
        node_of = {prefix: i for i, prefix in enumerate(order)}
        for data in tokens_at:
            for k in range(len(data)):
                if not _plain_text(data[k:]):
                    plain_below[node_of[data[:k + 1]]] = False
        twins = np.array([(i, ids[0]) for ids in tokens_at.values() for i in ids[1:]], dtype=np.int32)
        return cls(subtree_bytes=subtree_bytes, byte=byte, depth=depth, skip=skip, height=height,
                   token_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int32),
                   token_ids=np.array([i for p in order for i in tokens_at.get(p, ())], dtype=np.int32),
                   token_depth=np.array([len(p) for p in order for _ in tokens_at.get(p, ())], dtype=np.int32),
                   node_token=node_token, twins=twins.reshape(-1, 2), max_depth=int(depth.max()),
                   plain_below=plain_below)


def _plain_text(data: bytes) -> bool:
    """Whether `data` is whole UTF-8 characters that a JSON string holds unescaped (no quote, backslash
    or control character)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= " " and c not in '"\\' for c in text)
