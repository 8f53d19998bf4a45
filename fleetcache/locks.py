"""Single-flight locks: per-key in-process locks, and a pottery Redlock across processes.

The in-process registry hands one lock per key to every thread/greenlet of a process and
forgets it when the last holder leaves, so it never grows with the key space. Locks are
made with ``threading.Lock`` looked up at call time: after gevent's monkey-patching that is a
greenlet lock, which a compute may hold across I/O without blocking the hub.

The Redlock is only ever tried without blocking. pottery's blocking ``acquire`` polls with
random sleeps of up to 200 ms; waiters here instead wait for the *value* (see
:mod:`fleetcache.cache`), which arrives as soon as the winner stores it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from .errors import BackendUnavailableError

logger = logging.getLogger("fleetcache")


def _import_pottery() -> Any:
    """Import pottery without keeping its process-wide side effect.

    ``import pottery`` replaces ``json.dumps`` with a wrapper for the whole process (~35%
    slower json in the host app). If we are the first to import it, put the original back;
    if the app imported pottery itself, its choice stands.
    """
    already = "pottery" in sys.modules
    original_dumps = json.dumps
    import pottery  # noqa: PLC0415

    if not already:
        json.dumps = original_dumps
    return pottery


_pottery = _import_pottery()


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


class FleetLock:
    """A non-blocking, auto-releasing Redlock on one Redis, one instance per acquisition."""

    __slots__ = ("_lock", "key")

    def __init__(self, client: redis.Redis, name: str, auto_release: float) -> None:
        # raise_on_redis_errors: an unreachable Redis must read as "down" (degrade), not as
        # "someone else holds it" (which would make us wait for a lock nobody has).
        self._lock = _pottery.Redlock(
            key=name, masters={client}, auto_release_time=auto_release,
            raise_on_redis_errors=True,
        )
        self.key: str = self._lock.key  # what Redis stores: pottery prefixes "redlock:"

    def try_acquire(self) -> bool:
        """Take the lock if free, now; ``BackendUnavailableError`` if Redis is down."""
        try:
            return bool(self._lock.acquire(blocking=False))
        except (_pottery.QuorumIsImpossible, redis.RedisError) as exc:
            raise BackendUnavailableError(f"lock {self.key}: {exc}") from exc

    def release(self) -> None:
        """Release; a lock that already expired (slow compute) is logged, not raised."""
        try:
            self._lock.release()
        except (_pottery.PotteryError, _pottery.PrimitiveError, redis.RedisError) as exc:
            logger.warning("fleetcache: could not release %s (expired or Redis down): %s",
                           self.key, type(exc).__name__)
