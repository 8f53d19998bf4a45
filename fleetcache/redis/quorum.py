"""The fill lock on independent masters (``lock_masters``): Redlock's quorum.

On one server the fill lock is a ``SET NX PX`` inside the lookup script, next to the value
(:mod:`fleetcache.redis.store`): one round trip for "not cached, and now mine". Its safety
hangs on that server keeping the lock key: a failover to a replica that had not received
it, a restart or a flush hands the lock to a second process while the first still
computes. With ``lock_masters`` the lock is decided by a majority of independent masters
instead, as pottery's ``Redlock(masters=...)`` decides it (same key, ``redlock:<name>``,
and compare-and-delete release, so a pottery Redlock on those masters and that name
excludes and is excluded).

The smallest change that keeps the single-server path as it is: the lookup script still
takes the lock on the cache's server, which stays what waiters poll (value and holder in
one MGET) and what the store and abandon scripts release; the process that got it then
asks the quorum (:class:`QuorumLocks`): one ``SET NX PX`` per master per cold miss, and
one compare-and-delete per master after storing. A lookup that finds the value costs nothing more.

* Quorum taken: the process computes, as on one server.
* Quorum held by another process (the cache's server had lost its copy): it keeps the
  lock it took on the cache's server for ``lock_timeout`` (so other processes wait rather
  than take it in turn), gives up its fill lease and waits for the value like any loser.
* No majority answers (2 of 3 masters down): the compute goes ahead under the cache
  server's lock alone, i.e. with single-server safety, and a warning is logged (1st, 2nd,
  4th... time). A dead master costs a refused connect; a stalled one ``connect_timeout`` or
  ``socket_timeout`` (times ``1 + retries``): bounded either way.

Releases go to the quorum first when a fill is abandoned (so the next process to take
the server's lock finds the quorum free), and after the store when it succeeded (so no
process sees the lock free before the value is there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from ..core.protocols import FillLock, FillOutcome
from .store import RedisStore

logger = logging.getLogger("fleetcache")

# pottery's (and the Redlock paper's) clock drift allowance: 1% of the TTL plus 2 ms.
_DRIFT = 0.01
_DRIFT_MS = 2

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class QuorumLocks:
    """``SET NX PX`` and compare-and-delete on every master, one after the other.

    pottery asks the masters in parallel, from a fresh ThreadPoolExecutor thread per call
    (TRAPS.md: ~0.6 ms, and a logged traceback for every Redis error). In turn on the
    calling thread, 3 masters on a LAN cost about as much (3 round trips of ~0.1 ms), and
    a stalled master its timeout once, as in parallel.
    """

    __slots__ = ("_clients", "_quorum", "_release", "_said")

    def __init__(self, clients: Sequence[redis.Redis]) -> None:
        self._clients = list(clients)
        self._quorum = len(self._clients) // 2 + 1
        self._release = [c.register_script(_RELEASE) for c in self._clients]
        self._said = 0

    def acquire(self, name: str, token: str, ttl_ms: int) -> bool | None:
        """True if a majority granted ``name`` to ``token`` within its validity; False if
        enough masters answered that another holds it; None if no majority answered."""
        started = time.monotonic()
        replies = self._each(lambda c: c.set(name, token, nx=True, px=ttl_ms))
        ours = sum(1 for r in replies if r is True)
        answered = sum(1 for r in replies if not isinstance(r, Exception))
        elapsed_ms = (time.monotonic() - started) * 1000
        valid = ttl_ms - elapsed_ms - (ttl_ms * _DRIFT + _DRIFT_MS) > 0
        if ours >= self._quorum and valid:
            return True
        if ours:
            self.release(name, token)
        if answered >= self._quorum:
            return False
        self._said += 1
        if self._said & (self._said - 1) == 0:
            errors = {type(r).__name__ for r in replies if isinstance(r, Exception)}
            logger.warning("fleetcache: only %d of %d lock masters answered (%s); computing "
                           "under the cache server's lock alone (%d so far)", answered,
                           len(replies), ", ".join(sorted(errors)), self._said)
        return None

    def release(self, name: str, token: str) -> None:
        """Delete ``name`` wherever ``token`` holds it (never raises: a master that does not
        answer lets the lock expire)."""
        scripts = iter(self._release)
        self._each(lambda c: next(scripts)(keys=[name], args=[token], client=c))

    def _each(self, command: Any) -> list[Any]:
        replies: list[Any] = []
        for client in self._clients:
            try:
                replies.append(command(client))
            except (redis.RedisError, OSError) as exc:
                replies.append(exc)
        return replies

    def close(self) -> None:
        for client in self._clients:
            client.connection_pool.disconnect()


class QuorumStore(RedisStore):
    """:class:`RedisStore` whose fill lock is confirmed by :class:`QuorumLocks`."""

    __slots__ = ("_quorum",)

    def __init__(self, *args: Any, quorum: QuorumLocks, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._quorum = quorum

    def fetch_or_lock(self, key: str, lock: FillLock) -> tuple[bytes | None, bool]:
        value, won = super().fetch_or_lock(key, lock)
        if not won:
            return value, False
        return None, self._confirm(key, lock)

    def lock_stale(self, key: str, blob: bytes, lock: FillLock) -> tuple[int, float]:
        code, held = super().lock_stale(key, blob, lock)
        if code != 1 or self._confirm(key, lock):
            return code, held
        return 0, lock.ttl_ms / 1000.0  # another process refreshes it: serve stale

    def _confirm(self, key: str, lock: FillLock) -> bool:
        """The cache server granted ``lock``: does the quorum (see the module doc)?"""
        if self._quorum.acquire(lock.key, lock.token, lock.ttl_ms) is not False:
            return True
        # Another holds it and the server had lost its copy: keep ours there for waiters.
        super().abandon_fill(key, lock, hold_ms=lock.ttl_ms)
        return False

    def store_fill(self, key: str, blob: bytes, ttl_ms: int, lock: FillLock, message: bytes,
                   **options: Any) -> tuple[FillOutcome, int]:
        try:
            return super().store_fill(key, blob, ttl_ms, lock, message, **options)
        finally:
            self._quorum.release(lock.key, lock.token)

    def abandon_fill(self, key: str, lock: FillLock, *, hold_ms: int = 0) -> None:
        self._quorum.release(lock.key, lock.token)
        super().abandon_fill(key, lock, hold_ms=hold_ms)

    def close(self) -> None:
        super().close()
        self._quorum.close()
