"""The Redis side: a pool with short timeouts, and the few commands the cache needs.

Bytes in, bytes out: encoding lives in :mod:`fleetcache.codec`. Every redis-py error is
mapped onto :class:`~fleetcache.errors.BackendError` (chained), so the front decides per
operation whether to degrade (reads) or raise (writes). Each write is sent together with its
invalidation in one MULTI/EXEC: one round trip, and never a new value without its notice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import CacheConfig
from .errors import BackendError, BackendUnavailableError

T = TypeVar("T")

_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError)

_DISCARD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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

    __slots__ = ("_discard", "channel", "client", "prefix")

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.prefix = f"{namespace}:v:"
        self.channel = f"{namespace}:inv"
        self._discard = client.register_script(_DISCARD)

    def data_key(self, key: str) -> str:
        """The Redis key holding ``key``'s value."""
        return self.prefix + key

    def get(self, key: str) -> bytes | None:
        """One GET."""
        with mapped_errors("GET"):
            return self.client.get(self.prefix + key)  # type: ignore[return-value]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET for many keys."""
        with mapped_errors("MGET"):
            return self.client.mget([self.prefix + k for k in keys])  # type: ignore[return-value]

    def get_and_check_lock(self, key: str, lock_key: str) -> tuple[bytes | None, bytes | None]:
        """The value and the lock's holder token (None: free), in one MGET round trip."""
        with mapped_errors("MGET"):
            blob, holder = self.client.mget([self.prefix + key, lock_key])
        return blob, holder  # type: ignore[return-value]

    def discard(self, key: str, blob: bytes) -> bool:
        """Delete ``key`` only if it still holds ``blob`` (compare-and-delete, one script)."""
        with mapped_errors("discard"):
            return bool(self._discard(keys=[self.prefix + key], args=[blob]))

    def set_and_publish(
        self, key: str, blob: bytes, ttl_ms: int, message: bytes, *, only_if_absent: bool = False
    ) -> bool:
        """SET (NX when filling a computed value) and PUBLISH atomically; False if NX lost."""
        with mapped_errors("SET"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.prefix + key, blob, px=ttl_ms, nx=only_if_absent)
            pipe.publish(self.channel, message)
            stored, _ = pipe.execute()
        return bool(stored)

    def delete_and_publish(self, key: str, message: bytes) -> bool:
        """DEL and PUBLISH atomically; True if the key existed."""
        with mapped_errors("DEL"):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.prefix + key)
            pipe.publish(self.channel, message)
            deleted, _ = pipe.execute()
        return bool(deleted)

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

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run any client call with errors mapped (used by streams and health)."""
        with mapped_errors(what):
            return fn()


def _glob_escape(text: str) -> str:
    """Escape SCAN MATCH metacharacters so a namespace never matches another's keys."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
