"""The clock seam: every TTL and lease decision reads time through a :class:`Clock`.

Injected like cachetools' ``timer=``: ``FleetCache(clock=...)``. Tests of expiry, stale
windows and leases pass a :class:`fleetcache.testing.FakeClock` and move it forward instead
of sleeping. Waits on sockets and events (lock polling, the listener's watchdog) keep real
time: a frozen fake clock must not make a waiter wait forever.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Two readings: a monotonic one for L1 lifetimes and leases, a wall one for the
    absolute L2 expiry stored with every value (shared by every host of the fleet)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    """The real clocks. Static methods, so ``clock.monotonic`` is ``time.monotonic``
    itself: the L1 hit path pays no bound-method call for the seam."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


SYSTEM_CLOCK = SystemClock()
