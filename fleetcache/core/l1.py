"""The per-process L1: a bounded TTL dict whose read path is one lookup and one clock read.

Readers take no lock: ``dict.get`` is atomic under the GIL and readers never mutate. Every
mutation (store, invalidate, flush) happens under one lock and bumps ``seq``, the counter
that makes promotion race-free: a reader notes ``seq`` before its L2 GET and stores the
result only if *that key* was not written or invalidated, and L1 not flushed, since
(:meth:`store_if_unchanged`). Without it, a read of the old L2 value that lands after the
invalidation for that key would sit in L1 for the whole L1 TTL. Each key's last move is
remembered (``_touched``) so that an invalidation of one key does not void promotions of
the others (a global check refused 15-36% of a busy worker's promotions); past
``_TOUCHED_LIMIT`` keys the memory is dropped and counts as a flush for in-flight reads. A
false "moved" only costs one extra L2 read later.

``fresh_until`` is the listener's lease on L1 (on the cache's monotonic clock): hits are
served only before it. The invalidation listener pushes it forward each time it has drained
its socket, so a listener starved of CPU stops L1 from serving values it may not have heard
were replaced. While the bus is down it is infinite: entries then live ``degraded_l1_ttl``
instead.

Eviction is oldest-inserted first (FIFO): LRU would need a write on every hit.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

from .clock import SYSTEM_CLOCK, Clock

Entry = tuple[Any, float]  # (value, expires_at on the monotonic clock)

_TOUCHED_LIMIT = 4096  # keys whose last move is remembered; beyond that, a promotion floor


class LocalStore:
    """Bounded TTL store. ``data`` is read directly by the cache's hit path."""

    __slots__ = ("_floor", "_lock", "_now", "_touched", "capacity", "data", "fresh_until",
                 "seq")

    def __init__(self, capacity: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.capacity = capacity
        self._now = clock.monotonic
        # OrderedDict: evicting the oldest is popitem(last=False), O(1); on a plain dict
        # del d[next(iter(d))] must skip the dead slots piling up at its front (~15x slower
        # at capacity). Lookups cost the same as on a dict.
        self.data: OrderedDict[str, Entry] = OrderedDict()
        self.seq = 0
        self.fresh_until = math.inf
        self._touched: dict[str, int] = {}  # key -> seq of its last write or invalidation
        self._floor = 0  # reads noted before this seq may not promote (flush, or pruning)
        # Looked up at call time, so a store made after gevent's monkey-patching gets a
        # greenlet-aware lock (a native lock would block the hub).
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        """The live entry for ``key``, or None (expired entries are left for the writers)."""
        entry = self.data.get(key)
        if entry is not None and entry[1] > self._now() < self.fresh_until:
            return entry
        return None

    def put(self, key: str, value: Any, ttl: float, seq: int) -> bool:
        """Store this process's own write, sent at ``seq``; False if ``key`` moved since
        (then it is dropped instead). Voids concurrent promotions of ``key`` either way."""
        with self._lock:
            moved = self._moved(key, seq)
            self._touch(key)
            if moved:
                self.data.pop(key, None)
                return False
            self._insert(key, (value, self._now() + ttl))
            return True

    def put_many(self, items: list[tuple[str, Any]], ttl: float, seq: int) -> int:
        """:meth:`put` for several keys under one lock; how many were stored."""
        with self._lock:
            expires_at = self._now() + ttl
            stored = 0
            for key, value in items:
                moved = self._moved(key, seq)
                self._touch(key)
                if moved:
                    self.data.pop(key, None)
                else:
                    self._insert(key, (value, expires_at))
                    stored += 1
            return stored

    def store_if_unchanged(self, key: str, value: Any, ttl: float, seq: int) -> bool:
        """Promote an L2 read taken at ``seq``; False if ``key`` moved (or L1 was flushed)
        since."""
        with self._lock:
            if self._moved(key, seq):
                return False
            self._insert(key, (value, self._now() + ttl))
            return True

    def store_many_if_unchanged(
        self, items: list[tuple[str, Any, float]], seq: int
    ) -> int:
        """Promote ``(key, value, ttl)`` reads taken at ``seq`` under one lock and one clock
        read; how many were stored (those whose key did not move since)."""
        with self._lock:
            now = self._now()
            stored = 0
            for key, value, ttl in items:
                if not self._moved(key, seq):
                    self._insert(key, (value, now + ttl))
                    stored += 1
            return stored

    def lease(self, until: float) -> None:
        """Serve hits only before ``until`` (the listener's lease; see the module doc)."""
        self.fresh_until = until

    def invalidate(self, key: str) -> bool:
        """Drop ``key``; True if it was present."""
        with self._lock:
            self._touch(key)
            return self.data.pop(key, None) is not None

    def clear(self) -> None:
        """Drop everything (and void in-flight promotions)."""
        with self._lock:
            self.seq += 1
            self._floor = self.seq
            self._touched.clear()
            self.data.clear()

    def __len__(self) -> int:
        return len(self.data)

    def _moved(self, key: str, seq: int) -> bool:
        """Whether ``key`` was written or invalidated, or L1 flushed, after ``seq``."""
        return self._floor > seq or self._touched.get(key, 0) > seq

    def _touch(self, key: str) -> None:
        self.seq += 1
        if len(self._touched) >= _TOUCHED_LIMIT:
            self._touched.clear()
            self._floor = self.seq  # forgotten moves: refuse every read noted before now
        self._touched[key] = self.seq

    def _insert(self, key: str, entry: Entry) -> None:
        data = self.data
        if data.pop(key, None) is None and len(data) >= self.capacity:
            data.popitem(last=False)  # the oldest insertion
        data[key] = entry
