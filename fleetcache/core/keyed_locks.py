"""The process half of single-flight: one lock per key, for every thread or greenlet.

The registry hands one lock per key to every thread/greenlet of a process and forgets it
when the last holder leaves, so it never grows with the key space. Locks are made with
``threading.Lock`` looked up at call time: after gevent's monkey-patching that is a greenlet
lock, which a compute may hold across I/O without blocking the hub.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class KeyedLocks:
    """One lock per key while anyone holds or waits for it."""

    __slots__ = ("_guard", "_slots")

    def __init__(self) -> None:
        self._guard = threading.Lock()  # held for a dict operation only, never across I/O
        self._slots: dict[str, list[Any]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock; other holders of the same key wait in turn."""
        with self._guard:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = [threading.Lock(), 0]
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._guard:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._slots[key]

    def __len__(self) -> int:
        return len(self._slots)
