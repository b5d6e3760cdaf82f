"""The one cache type: values by key, least recently used out first, safe across threads.

    cache = LRUCache(32)                                   # at most 32 entries
    cache = LRUCache(2**30, size_of=lambda kv: kv.nbytes)  # at most 1 GiB, by each value's size
    value = cache.get_or_build(key, lambda: expensive(key))

Used for compiled constraints, tool-call grammars, a constraint's per-state masks, tables derived from a
vocabulary and the prefix cache's KV entries. A value larger than the whole budget is not kept.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable


class LRUCache:
    def __init__(self, max_size: int, size_of: Callable[[object], int] = lambda value: 1):
        self.max_size = max_size
        self.size_of = size_of
        self.size = 0                             # the sum of size_of over the entries
        self._entries: OrderedDict = OrderedDict()   # key → (value, size), least recently used first
        self._lock = threading.Lock()

    def get(self, key: Hashable, default=None):
        """The value, marked as just used; `default` when absent."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return default
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value) -> bool:
        """Keep `value`, evicting the least recently used entries to make room; False (nothing kept, no
        other entry evicted) when it alone exceeds the budget."""
        size = self.size_of(value)
        with self._lock:
            self._pop(key)                        # a new value replaces the old, kept or not
            if size > self.max_size:
                return False
            while self._entries and self.size + size > self.max_size:
                self._pop(next(iter(self._entries)))
            self._entries[key] = (value, size)
            self.size += size
        return True

    def get_or_build(self, key: Hashable, build: Callable[[], object]):
        """The cached value, or `build()` kept (built outside the lock: two threads may both build it)."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            value = build()
            self.put(key, value)
        return value

    def pop(self, key: Hashable, default=None):
        with self._lock:
            entry = self._pop(key)
        return default if entry is None else entry[0]

    def touch(self, key: Hashable) -> None:
        """Mark `key` as just used."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)

    def items(self) -> list[tuple]:
        """A snapshot of (key, value) pairs, least recently used first."""
        with self._lock:
            return [(key, entry[0]) for key, entry in self._entries.items()]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _pop(self, key: Hashable):
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry[1]
        return entry


_MISSING = object()
