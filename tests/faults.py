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


class _Deaf:
    """A bus receiver that hears every notice but the ones that invalidate something."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name in ("invalidate", "invalidate_tag", "invalidate_prefix"):
            return lambda *_: None
        return getattr(self._real, name)


def deafen(cache: FleetCache) -> None:
    """From now on the listener drops every key, tag and prefix notice on the floor (it
    still suspends, replays and flushes on a gap): a negative control, a cache that misses
    invalidations."""
    bus = _process(cache).bus
    bus._receiver = _Deaf(bus._receiver)  # type: ignore[attr-defined]


def lapse_lease(cache: FleetCache) -> None:
    """End the listener's lease on L1 now, as if the listener had fallen behind: busy, so
    no reader may renew it either (its next drain, within 100 ms, restores both)."""
    _process(cache).bus._drained = None  # type: ignore[attr-defined]
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


@contextlib.contextmanager
def receiver_replaced(cache: FleetCache, wrap: Callable[[Any], Any]) -> Iterator[Any]:
    """Within the block, the listener hands every notice to ``wrap(real_receiver)`` (a spy,
    or one that holds a notice back); the real one after."""
    bus = _process(cache).bus
    real = bus._receiver  # type: ignore[attr-defined]
    bus._receiver = wrap(real)  # type: ignore[attr-defined]
    try:
        yield bus._receiver  # type: ignore[attr-defined]
    finally:
        bus._receiver = real  # type: ignore[attr-defined]
