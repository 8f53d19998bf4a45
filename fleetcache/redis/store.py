"""The L2 store: the few commands the cache needs, each one round trip.

Bytes in, bytes out: encoding lives in :mod:`fleetcache.core.codec`, names in
:mod:`fleetcache.redis.keys`. Every redis-py error is mapped onto
:class:`~fleetcache.BackendError` (chained, :mod:`fleetcache.redis.errors`), so the front
decides per operation whether to degrade (reads) or raise (writes).

Every write is one Lua script that also publishes its notice: one round trip, atomic (never
a new value without its notice), and one reply to parse. A MULTI/EXEC doing the same costs
redis-py twice the CPU (five replies), which a CPU-bound worker pays on every write and miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from ..core.protocols import FillLock
from .errors import mapped_errors
from .keys import KeyLayout
from .lane import CommandLane

_DISCARD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: value, lock, waiters flag; ARGV: lock token, lock ms. Reply {value or nil, won}.
# Atomic, so there is no window between "not cached" and "lock taken" for a holder to store
# and release in. A loser sets the waiters flag: the holder then announces its fill.
_FETCH_OR_LOCK = """
local value = redis.call('GET', KEYS[1])
if value then return {value, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 1} end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return {false, 0}
"""

# A script is not rolled back when a command in it fails (an ACL without the channel, say):
# each write script publishes first, so a failure leaves at worst a notice without a write
# (harmless: readers re-read L2), never a write without its notice. Readers cannot tell the
# order apart: nothing runs between a script's commands.

# KEYS: value, lock, waiters flag; ARGV: blob, ms, lock token, channel, fill notice.
# SET NX (a set() during the compute is newer), pottery's compare-and-delete release, and a
# fill notice only if someone waits. Reply {stored, released}.
_STORE_FILL = """
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
local stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
local released = 0
if redis.call('GET', KEYS[2]) == ARGV[3] then released = redis.call('DEL', KEYS[2]) end
redis.call('DEL', KEYS[3])
return {stored, released}
"""

# KEYS: value; ARGV: blob, ms, channel, notice, "NX" or "". Reply 1 if stored.
_SET_PUBLISH = """
if ARGV[5] == 'NX' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('PUBLISH', ARGV[3], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: values; ARGV: ms, channel, one notice for all, then a blob per key.
_SET_MANY_PUBLISH = """
redis.call('PUBLISH', ARGV[2], ARGV[3])
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[3 + i], 'PX', ARGV[1]) end
return #KEYS
"""

# KEYS: values; ARGV: channel, notice. Reply: keys deleted.
_DELETE_PUBLISH = """
redis.call('PUBLISH', ARGV[1], ARGV[2])
local deleted = 0
for _, key in ipairs(KEYS) do deleted = deleted + redis.call('DEL', key) end
return deleted
"""


class RedisStore:
    """The cache's Redis commands, every name taken from one :class:`KeyLayout`."""

    __slots__ = ("_delete", "_discard", "_fetch_or_lock", "_lane", "_set", "_set_many",
                 "_store_fill", "client", "keys")

    def __init__(self, client: redis.Redis, keys: KeyLayout) -> None:
        self.client = client
        self.keys = keys
        pool = client.connection_pool
        # Hot commands skip redis-py's per-command pool checkout (see fleetcache.redis.lane);
        # at most half the pool idles in the lane, the rest serves streams and the bus.
        self._lane = CommandLane(pool, keep=max(1, pool.max_connections // 2))
        # redis-py's Script: its SHA and text (the lane runs EVALSHA, EVAL on NOSCRIPT).
        self._discard = client.register_script(_DISCARD)
        self._fetch_or_lock = client.register_script(_FETCH_OR_LOCK)
        self._store_fill = client.register_script(_STORE_FILL)
        self._set = client.register_script(_SET_PUBLISH)
        self._set_many = client.register_script(_SET_MANY_PUBLISH)
        self._delete = client.register_script(_DELETE_PUBLISH)

    def close(self) -> None:
        """Give the lane's idle connections back to the pool."""
        self._lane.close()

    def ping(self) -> None:
        """One PING, on the lane's connections (a health probe opens no extra one)."""
        with mapped_errors("PING"):
            self._lane.execute("PING")

    def get(self, key: str) -> bytes | None:
        """One GET."""
        with mapped_errors("GET"):
            return self._lane.execute("GET", self.keys.value(key))  # type: ignore[no-any-return]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET for many keys."""
        value = self.keys.value
        with mapped_errors("MGET"):
            return self._lane.execute(  # type: ignore[no-any-return]
                "MGET", *[value(k) for k in keys])

    def get_and_check_lock(self, key: str) -> tuple[bytes | None, bytes | None]:
        """The value and its fill lock's holder token (None: free), in one MGET."""
        with mapped_errors("MGET"):
            blob, holder = self._lane.execute("MGET", self.keys.value(key), self.keys.lock(key))
        return blob, holder

    def fetch_or_lock(self, key: str, lock: FillLock) -> tuple[bytes | None, bool]:
        """The value of ``key``; if there is none, try ``lock``: (value, won), one script.

        A loser is noted as waiting, so the winner announces its fill (see store_fill).
        """
        with mapped_errors("GET"):
            value, won = self._lane.run_script(
                self._fetch_or_lock, [self.keys.value(key), lock.key, self.keys.waiters(key)],
                [lock.token, lock.ttl_ms])
        return value, bool(won)

    def discard(self, key: str, blob: bytes) -> bool:
        """Delete ``key`` only if it still holds ``blob`` (compare-and-delete, one script)."""
        with mapped_errors("discard"):
            return bool(self._lane.run_script(self._discard, [self.keys.value(key)], [blob]))

    def set_and_publish(
        self, key: str, blob: bytes, ttl_ms: int, message: bytes, *, only_if_absent: bool = False
    ) -> bool:
        """SET (NX for ``add``) and, if stored, PUBLISH ``message``; False if NX lost."""
        with mapped_errors("SET"):
            return bool(self._lane.run_script(
                self._set, [self.keys.value(key)],
                [blob, ttl_ms, self.keys.channel, message, "NX" if only_if_absent else ""]))

    def store_fill(
        self, key: str, blob: bytes, ttl_ms: int, lock: FillLock, message: bytes
    ) -> bool:
        """Store a computed value (SET NX), release ``lock``, and send ``message`` (a fill
        notice) if anyone waits; True if stored."""
        with mapped_errors("SET"):
            stored, released = self._lane.run_script(
                self._store_fill, [self.keys.value(key), lock.key, self.keys.waiters(key)],
                [blob, ttl_ms, lock.token, self.keys.channel, message])
        lock.released(released)
        return bool(stored)

    def set_many_and_publish(
        self, blobs: Sequence[tuple[str, bytes]], ttl_ms: int, message: bytes
    ) -> None:
        """SET every ``(key, blob)`` and PUBLISH one ``message`` naming them all, atomically."""
        value = self.keys.value
        with mapped_errors("SET"):
            self._lane.run_script(self._set_many, [value(key) for key, _ in blobs],
                                  [ttl_ms, self.keys.channel, message,
                                   *(blob for _, blob in blobs)])

    def delete_and_publish(self, keys: Sequence[str], message: bytes) -> int:
        """DEL ``keys`` and PUBLISH ``message`` atomically; how many existed."""
        value = self.keys.value
        with mapped_errors("DEL"):
            return int(self._lane.run_script(self._delete, [value(key) for key in keys],
                                             [self.keys.channel, message]))

    def clear_and_publish(self, message: bytes, batch: int = 500) -> int:
        """Delete every value of this namespace (SCAN, never KEYS), then announce a flush."""
        deleted = 0
        pattern = _glob_escape(self.keys.value_prefix) + "*"
        with mapped_errors("clear"):
            found: list[Any] = []
            for name in self.client.scan_iter(match=pattern, count=batch):
                found.append(name)
                if len(found) >= batch:
                    deleted += self.client.unlink(*found)
                    found.clear()
            if found:
                deleted += self.client.unlink(*found)
            self.client.publish(self.keys.channel, message)
        return deleted


def _glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so a namespace never matches another's keys."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
