"""One exception tree for everything fleetcache raises on purpose.

Argument errors also subclass the matching built-in (``ValueError`` / ``TypeError``) so code
that already catches those keeps working; backend errors chain the redis-py exception as
``__cause__`` so the root cause is never lost (its message never contains the password:
redis-py formats host and port only).
"""

from __future__ import annotations

from typing import Any


class FleetCacheError(Exception):
    """Root of every exception fleetcache raises."""


class InvalidArgumentError(FleetCacheError, ValueError):
    """An argument of a call is out of range (TTL, maxlen, count, stream fields, ...)."""


class ConfigError(InvalidArgumentError):
    """A setting of :class:`~fleetcache.CacheConfig` is out of range."""


class InvalidKeyError(InvalidArgumentError):
    """A cache key is not a non-empty ``str`` within the configured length."""


class ValueEncodeError(FleetCacheError, TypeError):
    """A value cannot be encoded as MessagePack; nothing was written.

    Attributes:
        key: the cache key the value was meant for.
        value_type: the offending type (the value itself, or the first unsupported part).
    """

    def __init__(self, key: str, value_type: type, reason: str) -> None:
        self.key = key
        self.value_type = value_type
        super().__init__(
            f"cannot cache {value_type.__module__}.{value_type.__qualname__} under key "
            f"{key!r}: {reason}"
        )


class ValueTypeError(FleetCacheError, TypeError):
    """A typed read (``get(key, type=T)``, ``get_or_compute(..., type=T)``) found a value
    that does not convert to ``T``; for a computed value, nothing was stored.

    Attributes:
        key: the cache key.
        expected: the type asked for.
    """

    def __init__(self, key: str, expected: Any, reason: str) -> None:
        self.key = key
        self.expected = expected
        name = getattr(expected, "__qualname__", None) or repr(expected)
        super().__init__(f"the value of {key!r} is not a {name}: {reason}")


class ValueTooLargeError(InvalidArgumentError):
    """An encoded value exceeds ``max_value_bytes``; nothing was written."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(f"value for key {key!r} encodes to {size} bytes, over the {limit} limit")


class CorruptValueError(FleetCacheError):
    """Bytes stored under a fleetcache key are not a fleetcache envelope.

    Never raised into a cache read (a corrupt entry reads as a miss and is counted); raised
    only by :func:`fleetcache.codec.Codec.decode` for callers that want to know.
    """


class BackendError(FleetCacheError):
    """Redis answered with an error, or could not be reached, during a write or stream call."""


class BackendUnavailableError(BackendError):
    """Redis could not be reached within the configured timeouts.

    Raised by writes and deletes (the fleet could not be told, so the caller must know);
    reads degrade to a miss instead.
    """


class PoolExhaustedError(BackendError):
    """Every connection of this process's pool was busy for ``pool_timeout``.

    Redis itself may be fine: raise ``max_connections``, or hold fewer connections at once
    (each blocking ``read_stream`` holds one for its whole ``block_ms``).
    """


class BackendAuthError(BackendError):
    """Redis refused the credentials (or the ACL user) of the URL: not an outage, so it is
    never reported as one."""


class RecursiveComputeError(FleetCacheError, RuntimeError):
    """A ``get_or_compute`` (or ``@cached``) compute asked for its own key, in the same
    thread or greenlet: waiting for the value would wait for itself.

    Attributes:
        key: the key whose compute recursed.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"the compute of {key!r} asked for {key!r} itself (directly or "
                         f"through other keys' computes): it would wait for itself")


class CacheClosedError(FleetCacheError):
    """The cache was used after :meth:`~fleetcache.FleetCache.close`."""
