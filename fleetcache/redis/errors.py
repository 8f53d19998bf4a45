"""redis-py's exceptions mapped onto fleetcache's tree, in one place.

The front decides per operation whether a :class:`~fleetcache.BackendError` degrades
(reads) or raises (writes); this module only decides which one a redis-py error is.
"""

from __future__ import annotations

from types import TracebackType

import redis

from ..core.errors import (
    BackendAuthError,
    BackendError,
    BackendUnavailableError,
    PoolExhaustedError,
)

# A cluster refusing the namespace's slot for now (down, or the slot half-way through a
# migration: fleetcache.redis.cluster) is an outage too, though Redis says it in a reply.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError,
               redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
               redis.exceptions.AskError)
_AUTH = (redis.AuthenticationError, redis.exceptions.AuthorizationError)
_POOL_EMPTY = "No connection available"  # what redis-py's BlockingConnectionPool raises


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
        if isinstance(exc, _AUTH):  # subclasses of ConnectionError, but no outage
            raise BackendAuthError(f"{self._what}: Redis refused the credentials: {exc}") from exc
        if isinstance(exc, redis.ConnectionError) and str(exc).startswith(_POOL_EMPTY):
            raise PoolExhaustedError(
                f"{self._what}: every connection of the pool was busy for pool_timeout "
                f"(raise max_connections, or hold fewer at once)") from exc
        if isinstance(exc, UNAVAILABLE):
            raise BackendUnavailableError(f"{self._what}: Redis unreachable: {exc}") from exc
        if isinstance(exc, redis.RedisError):
            # redis-py prefixes pipeline errors with the whole command, binary payload
            # included: keep only Redis's own reason.
            reason = str(exc).rpartition(" of pipeline caused error: ")[2]
            raise BackendError(f"{self._what}: {reason}") from exc
