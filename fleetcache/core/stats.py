"""Per-process counters (plain ints: a hit costs one attribute increment) and snapshots."""

from __future__ import annotations

from dataclasses import dataclass, fields


class Counters:
    """Mutable counters owned by one cache in one process; reset in a forked child.

    Increments are not locked: under the GIL a rare lost increment is the price of keeping
    the hit path free of locks. They are statistics, not accounting.
    """

    __slots__ = (
        "computes",
        "corrupt_values",
        "in_flight",
        "invalidations_received",
        "invalidations_sent",
        "l1_hits",
        "l2_hits",
        "listener_waits",
        "lock_waits",
        "misses",
        "promotions",
        "reconnects",
        "redis_errors",
    )

    def __init__(self) -> None:
        self.l1_hits = 0
        self.l2_hits = 0
        self.misses = 0
        self.promotions = 0
        self.computes = 0
        self.in_flight = 0
        self.invalidations_sent = 0
        self.invalidations_received = 0
        self.lock_waits = 0
        self.listener_waits = 0
        self.redis_errors = 0
        self.corrupt_values = 0
        self.reconnects = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one process's counters (see :meth:`FleetCache.stats`).

    ``misses`` counts lookups that found nothing in L1 or L2; ``computes`` counts calls of a
    ``get_or_compute``/``cached`` function in this process; ``in_flight`` is how many run now;
    ``lock_waits`` counts waits for another process's compute; ``listener_waits`` counts L1
    hits held back until a late invalidation listener caught up; ``reconnects`` counts
    invalidation-bus recoveries (each flushed L1); ``corrupt_values`` counts foreign or
    damaged L2 entries read as misses; ``redis_errors`` counts Redis calls that failed.
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
    def of(cls, counters: Counters) -> CacheStats:
        """Copy the live counters."""
        return cls(**{f.name: getattr(counters, f.name) for f in fields(cls)})


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
