"""Fault injection into one process's half of a FleetCache: the one place tests spell its
private names. (To *look* inside a cache, use :mod:`fleetcache.testing`.)"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from fleetcache import FleetCache
from fleetcache.core.process import ProcessState


def _process(cache: FleetCache) -> ProcessState:
    """This process's connections, listener and L2 store of ``cache`` (opened if need be)."""
    return cache._tiers.process()


def deafen(cache: FleetCache) -> None:
    """From now on the listener drops every key notice on the floor (it still flushes on a
    gap): a negative control, a cache that misses invalidations."""
    _process(cache).bus._on_key = lambda key: None  # type: ignore[attr-defined]


def lapse_lease(cache: FleetCache) -> None:
    """End the listener's lease on L1 now, as if the listener had fallen behind (its next
    renewal restores it)."""
    cache._l1.fresh_until = 0.0


@contextlib.contextmanager
def l2_replaced(cache: FleetCache, wrap: Callable[[Any], Any]) -> Iterator[Any]:
    """Within the block, this process's cache talks to ``wrap(real_store)`` instead of its
    L2 store (a spy, or a store that runs a hook mid-read); the real one after."""
    proc = _process(cache)
    real = proc.l2
    proc.l2 = wrap(real)
    try:
        yield proc.l2
    finally:
        proc.l2 = real
