"""The Redis side: a pool with short timeouts, and the few commands the cache needs.

Bytes in, bytes out: encoding lives in :mod:`fleetcache.codec`. Every redis-py error is
mapped onto :class:`~fleetcache.errors.BackendError` (chained), so the front decides per
operation whether to degrade (reads) or raise (writes).

Every write is one Lua script that also publishes its notice: one round trip, atomic (never
a new value without its notice), and one reply to parse. A MULTI/EXEC doing the same costs
redis-py twice the CPU (five replies), which a CPU-bound worker pays on every write and miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import CacheConfig
from .errors import BackendError, BackendUnavailableError
from .lane import CommandLane
from .locks import FleetLock

_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError)

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


def make_client(config: CacheConfig) -> redis.Redis:
    """A client on a blocking pool with bounded waits everywhere.

    ``BlockingConnectionPool`` makes callers queue for ``pool_timeout`` instead of failing
    at once when every connection is busy (many greenlets under gevent). Retries cover
    connection errors only: retrying a timeout just doubles the wait on a stalled server.
    """
    retry = Retry(
        ExponentialBackoff(cap=0.05, base=0.005),
        config.retries,
        supported_errors=(redis.ConnectionError,),
    )
    pool = redis.BlockingConnectionPool.from_url(
        config.url,
        max_connections=config.max_connections,
        timeout=config.pool_timeout,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        retry=retry,
        # RESP2 without client info: one round trip to set up a connection (plus AUTH)
        # instead of four (HELLO, CLIENT MAINT_NOTIFICATIONS, 2x CLIENT SETINFO), each
        # of which could take a full socket_timeout on a slow link.
        protocol=2,
        driver_info=None,
    )
    return redis.Redis(connection_pool=pool)


class mapped_errors:  # lower case: used like the context-manager functions it replaced
    """Turn redis-py errors into fleetcache's tree (the original kept as ``__cause__``).

    A class, not ``@contextmanager``: the generator version cost ~6 us per L2 call.
    """

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
        if isinstance(exc, _UNAVAILABLE):
            raise BackendUnavailableError(f"{self._what}: Redis unreachable: {exc}") from exc
        if isinstance(exc, redis.RedisError):
            # redis-py prefixes pipeline errors with the whole command, binary payload
            # included: keep only Redis's own reason.
            reason = str(exc).rpartition(" of pipeline caused error: ")[2]
            raise BackendError(f"{self._what}: {reason}") from exc


class RedisStore:
    """The cache's Redis commands, all under one namespace."""

    __slots__ = ("_delete", "_discard", "_fetch_or_lock", "_lane", "_set", "_set_many",
                 "_store_fill", "channel", "client", "prefix", "waiters_prefix")

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        pool = client.connection_pool
        # Hot commands skip redis-py's per-command pool checkout (see fleetcache.lane); at
        # most half the pool idles in the lane, the rest serves streams and the bus.
        self._lane = CommandLane(pool, keep=max(1, pool.max_connections // 2))
        self.prefix = f"{namespace}:v:"
        self.waiters_prefix = f"{namespace}:w:"
        self.channel = f"{namespace}:inv"
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

    def data_key(self, key: str) -> str:
        """The Redis key holding ``key``'s value."""
        return self.prefix + key

    def get(self, key: str) -> bytes | None:
        """One GET."""
        with mapped_errors("GET"):
            return self._lane.execute("GET", self.prefix + key)  # type: ignore[no-any-return]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET for many keys."""
        with mapped_errors("MGET"):
            return self._lane.execute(  # type: ignore[no-any-return]
                "MGET", *[self.prefix + k for k in keys])

    def get_and_check_lock(self, key: str, lock_key: str) -> tuple[bytes | None, bytes | None]:
        """The value and the lock's holder token (None: free), in one MGET round trip."""
        with mapped_errors("MGET"):
            blob, holder = self._lane.execute("MGET", self.prefix + key, lock_key)
        return blob, holder

    def fetch_or_lock(self, key: str, lock: FleetLock) -> tuple[bytes | None, bool]:
        """The value of ``key``; if there is none, try ``lock``: (value, won), one script.

        A loser is noted as waiting, so the winner announces its fill (see store_fill).
        """
        with mapped_errors("GET"):
            value, won = self._lane.run_script(
                self._fetch_or_lock, [self.prefix + key, lock.key, self.waiters_prefix + key],
                [lock.token, lock.ttl_ms])
        return value, bool(won)

    def discard(self, key: str, blob: bytes) -> bool:
        """Delete ``key`` only if it still holds ``blob`` (compare-and-delete, one script)."""
        with mapped_errors("discard"):
            return bool(self._lane.run_script(self._discard, [self.prefix + key], [blob]))

    def set_and_publish(
        self, key: str, blob: bytes, ttl_ms: int, message: bytes, *, only_if_absent: bool = False
    ) -> bool:
        """SET (NX for ``add``) and, if stored, PUBLISH ``message``; False if NX lost."""
        with mapped_errors("SET"):
            return bool(self._lane.run_script(
                self._set, [self.prefix + key],
                [blob, ttl_ms, self.channel, message, "NX" if only_if_absent else ""]))

    def store_fill(
        self, key: str, blob: bytes, ttl_ms: int, lock: FleetLock, message: bytes
    ) -> bool:
        """Store a computed value (SET NX), release ``lock``, and send ``message`` (a fill
        notice) if anyone waits; True if stored."""
        with mapped_errors("SET"):
            stored, released = self._lane.run_script(
                self._store_fill, [self.prefix + key, lock.key, self.waiters_prefix + key],
                [blob, ttl_ms, lock.token, self.channel, message])
        lock.released(released)
        return bool(stored)

    def set_many_and_publish(
        self, blobs: Sequence[tuple[str, bytes]], ttl_ms: int, message: bytes
    ) -> None:
        """SET every ``(key, blob)`` and PUBLISH one ``message`` naming them all, atomically."""
        with mapped_errors("SET"):
            self._lane.run_script(self._set_many, [self.prefix + key for key, _ in blobs],
                                  [ttl_ms, self.channel, message, *(blob for _, blob in blobs)])

    def delete_and_publish(self, keys: Sequence[str], message: bytes) -> int:
        """DEL ``keys`` and PUBLISH ``message`` atomically; how many existed."""
        with mapped_errors("DEL"):
            return int(self._lane.run_script(self._delete, [self.prefix + key for key in keys],
                                             [self.channel, message]))

    def clear_and_publish(self, message: bytes, batch: int = 500) -> int:
        """Delete every value of this namespace (SCAN, never KEYS), then announce a flush."""
        deleted = 0
        with mapped_errors("clear"):
            keys: list[Any] = []
            for found in self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=batch):
                keys.append(found)
                if len(keys) >= batch:
                    deleted += self.client.unlink(*keys)
                    keys.clear()
            if keys:
                deleted += self.client.unlink(*keys)
            self.client.publish(self.channel, message)
        return deleted


def _glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so a namespace never matches another's keys."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
