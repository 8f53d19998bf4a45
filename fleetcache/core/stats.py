"""Per-process counters (plain ints, never locked) and snapshots. An L1 hit is counted by
its entry (see :meth:`fleetcache.core.l1.LocalStore.hits`), the rest here."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one process's counters (see :meth:`FleetCache.stats`).

    ``misses`` counts lookups that found nothing in L1 or L2; ``computes`` counts calls of a
    ``get_or_compute``/``cached`` function in this process; ``in_flight`` is how many run now;
    ``lock_waits`` counts waits for another process's compute; ``listener_waits`` counts L1
    hits held back until a late invalidation listener caught up; ``reconnects`` counts
    invalidation-bus recoveries (each replayed what it missed, or flushed L1);
    ``corrupt_values`` counts foreign or damaged L2 entries read as misses;
    ``redis_errors`` counts Redis calls that failed;
    ``fills_revoked`` counts computed values not stored because the key was written during
    the compute (or it ran past ``fill_timeout``); ``uncacheable_values`` counts computed
    values that could not be encoded and were kept in this process's L1 only;
    ``l1_evictions`` counts entries L1 let go to make room, ``l1_rejections`` reads and
    writes it did not keep because its entries were asked for more often (see
    :mod:`fleetcache.core.l1`); ``stale_served`` counts values served past their fresh time
    (``stale_ttl``), ``refreshes`` the background recomputes this process started and
    ``refresh_errors`` those that raised (the stale value was served instead).

    What the invalidation bus did: ``replays`` counts gaps it covered from the replay log
    (L1 kept), ``invalidations_replayed`` the keys those replays invalidated,
    ``l1_flushes`` the times it dropped the whole L1 (a remote ``clear()``, a gap the log
    could not cover, an external ``FLUSHALL``; not the first subscription's), and
    ``l1_suspended_s`` the seconds L1 spent held back waiting for a replay.
    ``l1_updates`` the entries replaced in place by another process's write
    (``sync_strategy="update"``) instead of being dropped.
    """

    l1_hits: int
    l2_hits: int
    misses: int
    promotions: int
    computes: int
    in_flight: int
    invalidations_sent: int
    invalidations_received: int
    lock_waits: int
    listener_waits: int
    redis_errors: int
    corrupt_values: int
    reconnects: int
    fills_revoked: int
    uncacheable_values: int
    l1_evictions: int
    l1_rejections: int
    stale_served: int
    refreshes: int
    refresh_errors: int
    replays: int
    invalidations_replayed: int
    l1_flushes: int
    l1_suspended_s: float
    l1_updates: int

    @property
    def lookups(self) -> int:
        """Reads that reached L1: hits of either tier plus misses."""
        return self.l1_hits + self.l2_hits + self.misses

    @property
    def hit_rate(self) -> float:
        """(l1_hits + l2_hits) / lookups, in 0..1 (0 before the first lookup)."""
        lookups = self.lookups
        return (self.l1_hits + self.l2_hits) / lookups if lookups else 0.0

    @classmethod
    def of(cls, counters: Counters, entry_hits: int = 0) -> CacheStats:
        """Copy the live counters; ``entry_hits`` are the L1 hits its entries counted
        themselves (see :meth:`fleetcache.core.l1.LocalStore.hits`)."""
        values = {f.name: getattr(counters, f.name) for f in fields(cls)}
        values["l1_hits"] += entry_hits
        return cls(**values)


@dataclass(slots=True)
class Counters:
    """Mutable counters owned by one cache in one process; reset in a forked child.

    The same names as :class:`CacheStats` (a unit test holds the two lists equal).
    Increments are not locked: under the GIL a rare lost increment is the price of keeping
    the hit path free of locks. They are statistics, not accounting.
    """

    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    promotions: int = 0
    computes: int = 0
    in_flight: int = 0
    invalidations_sent: int = 0
    invalidations_received: int = 0
    lock_waits: int = 0
    listener_waits: int = 0
    redis_errors: int = 0
    corrupt_values: int = 0
    reconnects: int = 0
    fills_revoked: int = 0
    uncacheable_values: int = 0
    l1_evictions: int = 0
    l1_rejections: int = 0
    stale_served: int = 0
    refreshes: int = 0
    refresh_errors: int = 0
    replays: int = 0
    invalidations_replayed: int = 0
    l1_flushes: int = 0
    l1_suspended_s: float = 0.0
    l1_updates: int = 0


@dataclass(frozen=True, slots=True)
class Health:
    """What :meth:`FleetCache.health` found, for readiness probes and dashboards."""

    redis_ok: bool
    redis_latency_ms: float | None
    bus_connected: bool
    l1_size: int
    pid: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Redis answers and the invalidation bus is subscribed."""
        return self.redis_ok and self.bus_connected
