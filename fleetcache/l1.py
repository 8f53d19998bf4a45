"""The per-process L1: a bounded TTL dict whose read path is one lookup and one clock read.

Readers take no lock: ``dict.get`` is atomic under the GIL and readers never mutate. Every
mutation (store, invalidate, evict, flush) happens under one lock and bumps ``seq``, the
counter that makes promotion race-free: a reader notes ``seq`` before its L2 GET and stores
the result only if ``seq`` has not moved meanwhile (:meth:`store_if_unchanged`). Without it,
a read of the old L2 value that lands after the invalidation for that key would sit in L1
for the whole L1 TTL. A false "moved" only costs one extra L2 read later.

Eviction is oldest-inserted first (FIFO): LRU would need a write on every hit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

monotonic = time.monotonic

Entry = tuple[Any, float]  # (value, expires_at on the monotonic clock)


class LocalStore:
    """Bounded TTL store. ``data`` is read directly by the cache's hit path."""

    __slots__ = ("_lock", "capacity", "data", "seq")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict: evicting the oldest is popitem(last=False), O(1); on a plain dict
        # del d[next(iter(d))] must skip the dead slots piling up at its front (~15x slower
        # at capacity). Lookups cost the same as on a dict.
        self.data: OrderedDict[str, Entry] = OrderedDict()
        self.seq = 0
        # Looked up at call time, so a store made after gevent's monkey-patching gets a
        # greenlet-aware lock (a native lock would block the hub).
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        """The live entry for ``key``, or None (expired entries are left for the writers)."""
        entry = self.data.get(key)
        if entry is not None and entry[1] > monotonic():
            return entry
        return None

    def put(self, key: str, value: Any, ttl: float, seq: int) -> bool:
        """Store this process's own write, sent when ``self.seq == seq``; False if anything
        moved since (then ``key`` is dropped instead). Voids concurrent promotions either way.
        """
        with self._lock:
            moved = self.seq != seq
            self.seq += 1
            if moved:
                self.data.pop(key, None)
                return False
            self._insert(key, (value, monotonic() + ttl))
            return True

    def put_many(self, items: list[tuple[str, Any]], ttl: float, seq: int) -> bool:
        """:meth:`put` for several keys under one lock: all stored, or (if anything moved
        since ``seq``) all dropped."""
        with self._lock:
            moved = self.seq != seq
            self.seq += 1
            if moved:
                for key, _ in items:
                    self.data.pop(key, None)
                return False
            expires_at = monotonic() + ttl
            for key, value in items:
                self._insert(key, (value, expires_at))
            return True

    def store_if_unchanged(self, key: str, value: Any, ttl: float, seq: int) -> bool:
        """Promote an L2 read taken when ``self.seq == seq``; False if anything moved since."""
        with self._lock:
            if self.seq != seq:
                return False
            self._insert(key, (value, monotonic() + ttl))
            return True

    def store_many_if_unchanged(
        self, items: list[tuple[str, Any, float]], seq: int
    ) -> int:
        """Promote ``(key, value, ttl)`` reads taken at ``seq`` under one lock and one clock
        read; how many were stored (0 if anything moved since)."""
        with self._lock:
            if self.seq != seq:
                return 0
            now = monotonic()
            for key, value, ttl in items:
                self._insert(key, (value, now + ttl))
            return len(items)

    def invalidate(self, key: str) -> bool:
        """Drop ``key``; True if it was present."""
        with self._lock:
            self.seq += 1
            return self.data.pop(key, None) is not None

    def clear(self) -> None:
        """Drop everything (and void in-flight promotions)."""
        with self._lock:
            self.seq += 1
            self.data.clear()

    def __len__(self) -> int:
        return len(self.data)

    def _insert(self, key: str, entry: Entry) -> None:
        data = self.data
        if data.pop(key, None) is None and len(data) >= self.capacity:
            data.popitem(last=False)  # the oldest insertion
        data[key] = entry
