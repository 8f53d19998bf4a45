"""Read-only looks inside one process's half of a FleetCache, for tests.

A test of invalidation or of fork safety has to see what the public API hides on purpose:
what this process's L1 holds right now (``get`` would count a hit, or fill it from Redis),
the listener's lease on L1, and which connection and listener the process uses
(``health()`` would PING, and open the connections if they were not yet). Each function
here reads one thing, never connects, never moves a counter, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from ..redis.bus import InvalidationBus

if TYPE_CHECKING:
    from ..core.front import FleetCache

__all__ = ["Connections", "connections", "l1_entry", "l1_lease", "l1_size", "l1_version"]


def l1_entry(cache: FleetCache, key: str) -> tuple[Any, float] | None:
    """``(value, expires_at)`` of ``key`` as this process's L1 stores it, expired or not
    (``expires_at`` on the cache's monotonic clock); None if L1 holds no entry for it.
    Looking does not count as a hit."""
    entry = cache._l1.data.get(key)
    return None if entry is None else (entry[0], float(entry[1]))


def l1_size(cache: FleetCache) -> int:
    """How many entries this process's L1 holds (expired ones until they are evicted)."""
    return len(cache._l1)


def l1_lease(cache: FleetCache) -> float:
    """Until when (the cache's monotonic clock) L1 may serve hits: the listener renews this
    lease each time it has drained its socket; ``math.inf`` while the bus is down."""
    return cache._l1.fresh_until


def l1_version(cache: FleetCache) -> int:
    """A number that every change to this process's L1 moves (a store, an invalidation, a
    flush): once it moves after a notice arrived, the notice has been applied."""
    return cache._l1.seq


@dataclass(frozen=True)
class Connections:
    """This process's connections of one cache, as :func:`connections` found them."""

    client: redis.Redis
    """The redis-py client in use (the application's own if it passed one)."""
    bus_connected: bool
    """The listener is subscribed now (its own flag: no PING)."""
    listener_alive: bool
    """The listener's thread (a greenlet under gevent) is running."""
    sender_id: bytes
    """The tag of this process's notices (a listener skips its own)."""


def connections(cache: FleetCache) -> Connections | None:
    """What this process's cache is connected with; None if it has not opened its
    connections yet (this never opens them)."""
    proc = cache._tiers.current
    if proc is None:
        return None
    bus = proc.bus
    assert isinstance(bus, InvalidationBus), f"not the Redis bus: {bus!r}"
    return Connections(proc.client, bus.connected, bus.running, bus.sender_id)
