"""Prefix caching: a new request reuses the KV of the tokens it shares with an earlier one.

Chat clients resend the whole conversation every turn, and many requests share a system prompt. When a
request ends, the keys and values of the tokens it fed through the model (its prompt and the tokens it
generated, except the last) are kept here, up to a byte budget, least recently used out first. A request
whose prompt starts with the same tokens copies those positions and prefills only the rest. Causal
attention makes a position's keys and values depend only on the tokens up to it, so the copy equals a
fresh prefill up to float rounding (the rounding of a differently shaped matrix product, as in batching).

Changed by the scheduler thread only (other threads read `stats`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kvcache import KVCache
from .lru import LRUCache


@dataclass(frozen=True)
class CachedPrefix:
    """A reusable beginning of a prompt: `cache` holds the KV of at least its first `length` tokens."""
    cache: KVCache
    length: int


MIN_REUSE = 16        # shorter shared beginnings (a template's preamble) are not worth a lookup hit


class PrefixCache:
    def __init__(self, max_bytes: int, min_reuse: int = MIN_REUSE):
        self.max_bytes = max_bytes
        self.min_reuse = min_reuse
        # id → (token ids [S], the KV of exactly those tokens), least recently used out past max_bytes
        self._entries = LRUCache(max_bytes, size_of=lambda entry: entry[1].nbytes)
        self._next_id = 0
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, prompt_ids) -> CachedPrefix | None:
        """The stored entry sharing the longest beginning with `prompt_ids` (the most recent of equals), if
        that is at least `min_reuse` tokens. At least the prompt's last token is left to feed, since the
        first sampled token needs its logits."""
        prompt = np.asarray(prompt_ids, dtype=np.int32)                  # [P]
        best, best_length = None, self.min_reuse - 1
        for key, (ids, cache) in reversed(self._entries.items()):
            n = min(ids.shape[0], prompt.shape[0] - 1)
            differs = np.flatnonzero(ids[:n] != prompt[:n])              # positions where they part
            shared = int(differs[0]) if differs.size else n
            if shared > best_length:
                best, best_length = (key, cache), shared
        if best is None:
            return None
        self._entries.touch(best[0])                                    # most recently used
        self.hits += 1
        self.reused_tokens += best_length
        return CachedPrefix(best[1], best_length)

    def store(self, token_ids, cache: KVCache) -> None:
        """Keep the KV of `token_ids` (the tokens `cache` holds, in order) as a right-sized copy (of its shared
        prompt and its own tokens, for one of n choices)."""
        length = min(len(token_ids), cache.length)
        size = length * cache.bytes_per_position                          # bytes of the right-sized copy
        if length < self.min_reuse or size > self.max_bytes:             # (before evicting anything for it)
            return
        ids = np.asarray(token_ids[:length], dtype=np.int32)              # [S]
        for key, (other, _) in self._entries.items():
            shorter = min(other.shape[0], length)
            if not np.array_equal(other[:shorter], ids[:shorter]):
                continue
            if other.shape[0] >= length:                                  # already held by a longer entry
                self._entries.touch(key)
                return
            self._entries.pop(key)                                        # this one extends it
        self._entries.put(self._next_id, (ids, cache.fork(capacity=length, length=length)))
        self._next_id += 1

    @property
    def bytes(self) -> int:
        return self._entries.size

    def stats(self) -> dict:
        return {"prefix_cache_entries": len(self._entries), "prefix_cache_bytes": self.bytes,
                "prefix_cache_hits": self.hits, "prefix_cache_reused_tokens": self.reused_tokens}
