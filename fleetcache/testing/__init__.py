"""Helpers for testing code that uses fleetcache (dogpile ships ``dogpile.testing`` the
same way): a clock that moves only when told to, and read-only looks inside one process's
half of a cache (its L1, its lease, its connections) for tests of invalidation and fork
safety."""

from .clock import FakeClock
from .introspect import Connections, connections, l1_entry, l1_lease, l1_size, l1_version

__all__ = [
    "Connections",
    "FakeClock",
    "connections",
    "l1_entry",
    "l1_lease",
    "l1_size",
    "l1_version",
]
