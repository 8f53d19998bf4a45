"""A manual clock for tests: TTLs, stale windows and leases expire when the test says so."""

from __future__ import annotations

import threading
import time


class FakeClock:
    """Both readings start at ``start`` and move only by :meth:`advance`.

    Pass it as ``FleetCache(clock=FakeClock())``. The wall reading is ``start`` plus the
    same offset, so L2 expiries written under it are in the future of the real clock as
    long as ``start`` is (the default is "now"). Thread-safe.
    """

    __slots__ = ("_lock", "_offset", "_start_monotonic", "_start_wall")

    def __init__(self, start: float | None = None) -> None:
        self._start_wall = time.time() if start is None else start
        self._start_monotonic = 1_000.0
        self._offset = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._start_monotonic + self._offset

    def time(self) -> float:
        return self._start_wall + self._offset

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds`` (never back)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._offset += seconds
