"""A bounded LRU cache of finished ``s_test`` runs, so a refined query (new k, new top) skips LiSSA.

Keyed by (model fingerprint, text, pair, label explained, exact, LiSSA config): everything ``s_test``
depends on. Bounded both in entries and in bytes (T vectors of P parameters each); on the Ray pool an
entry holds object references, so the vectors stay in the workers' object store until evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 2_000_000_000
"""Bytes an ``s_test`` cache holds by default (``INFLUENCE_S_TEST_CACHE_BYTES``; an evaluation's own)."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class STestCache:
    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: object, nbytes: int) -> None:
        """Store ``value``; entries larger than the byte bound are not kept at all."""
        if self.max_entries == 0 or nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1][1]
                self.stats.evictions += 1
