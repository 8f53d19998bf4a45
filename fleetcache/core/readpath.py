"""The read path past an L1 hit: a late listener, L2, promotion.

The L1 hit itself is inlined in :class:`~fleetcache.FleetCache` (one lookup, one clock
read, one comparison); everything here runs only when that did not answer. Reads never
raise for Redis trouble: an unreachable server or a corrupt entry is a miss, counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import BackendError
from .l1 import Entry
from .tiers import MISSING, Tiers


class ReadPath:
    """``get`` and ``get_many`` after L1 said no."""

    __slots__ = ("_tiers",)

    def __init__(self, tiers: Tiers) -> None:
        self._tiers = tiers

    def late_hit(self, key: str) -> Entry | None:
        """A live L1 entry held back only by the listener's lease (the listener is late):
        wait for it to catch up, then look again. None if there is no such entry."""
        tiers = self._tiers
        l1 = tiers.l1
        entry = l1.data.get(key)
        if entry is None or entry[1] <= (now := tiers.clock.monotonic()):
            return None
        if now >= l1.fresh_until and not tiers.await_listener():
            return None
        return l1.get(key)

    def get(self, key: str, default: Any) -> Any:
        """:meth:`FleetCache.get` once L1 had no live entry."""
        tiers = self._tiers
        tiers.check_key(key)
        entry = self.late_hit(key)
        if entry is not None:
            return entry[0]
        proc = tiers.process()
        seq = tiers.l1.seq
        version = 0
        try:
            if tiers.versioned:  # how new the value is, for update notices
                (blob,), version = proc.l2.get_many_versioned((key,))
            else:
                blob = proc.l2.get(key)
        except BackendError as exc:
            tiers.read_failed(exc)
            blob = None
        value = tiers.accept(key, blob, seq, version)
        if value is MISSING:
            tiers.counters.misses += 1
            return default
        tiers.counters.l2_hits += 1
        return value

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """:meth:`FleetCache.get_many`: L1 first, one MGET for the rest."""
        tiers = self._tiers
        keys = tiers.key_list(keys)
        l1 = tiers.l1
        found: dict[str, Any] = {}
        cold: list[str] = []
        l1_get = l1.data.get
        now = tiers.clock.monotonic()
        fresh_until = l1.fresh_until
        for key in keys:
            entry = l1_get(key)
            if entry is not None and entry[1] > now < fresh_until:
                entry[2] += 1
                found[key] = entry[0]
            else:
                cold.append(key)
        counters = tiers.counters
        if cold and now >= fresh_until:  # some may be held back only by a late listener
            held, cold = cold, []
            for key in held:
                entry = self.late_hit(key)  # waits once at most: then the lease is fresh
                if entry is not None:
                    found[key] = entry[0]
                else:
                    cold.append(key)
        if not cold:
            return found
        proc = tiers.process()
        seq = l1.seq
        version = 0
        try:
            if tiers.versioned:
                blobs, version = proc.l2.get_many_versioned(cold)
            else:
                blobs = proc.l2.get_many(cold)
        except BackendError as exc:
            tiers.read_failed(exc)
            blobs = [None] * len(cold)
        promote: list[tuple[str, Any, float, tuple[str, ...]]] = []
        l1_ttl = tiers.l1_ttl()
        wall = tiers.clock.time()
        servable_left, hits = tiers.servable_left, 0
        for key, decoded in zip(cold, tiers.decode_many(cold, blobs), strict=True):
            left = servable_left(decoded, wall)
            if left <= 0:  # absent, corrupt, stale, or a cached NOT_FOUND
                continue
            value = decoded[0]  # type: ignore[index]
            found[key] = value
            hits += 1
            promote.append((key, value, l1_ttl if l1_ttl < left else left,
                            decoded[2]))  # type: ignore[index]
        counters.l2_hits += hits
        counters.misses += len(cold) - hits
        counters.promotions += l1.store_many_if_unchanged(promote, seq, version)
        return found
