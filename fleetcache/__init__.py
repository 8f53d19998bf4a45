"""fleetcache: a two-tier (in-process L1 + Redis L2) cache for WSGI fleets.

Every worker keeps a bounded L1; writes and deletes drop the key from every worker's L1
through Redis pub/sub; cold keys are computed once per fleet. See README.md.

The public names are re-exported here; the layers behind them are ``fleetcache.core``
(policies), ``fleetcache.redis`` (the Redis side), ``fleetcache.integrations``,
``fleetcache.server`` (the embedded server), ``fleetcache.cli`` and ``fleetcache.testing``.
"""

from .core.clock import Clock, SystemClock
from .core.config import CacheConfig
from .core.decorator import CachedFunction
from .core.errors import (
    BackendAuthError,
    BackendError,
    BackendUnavailableError,
    CacheClosedError,
    ConfigError,
    CorruptValueError,
    FleetCacheError,
    InvalidArgumentError,
    InvalidKeyError,
    PoolExhaustedError,
    RecursiveComputeError,
    ValueEncodeError,
    ValueTooLargeError,
    ValueTypeError,
)
from .core.front import FleetCache
from .core.notfound import NOT_FOUND, NotFound
from .core.stats import CacheStats, Health
from .core.strategy import CacheStrategy
from .redis.keys import KeyLayout
from .redis.streams import StreamEntry

__all__ = [
    "NOT_FOUND",
    "BackendAuthError",
    "BackendError",
    "BackendUnavailableError",
    "CacheClosedError",
    "CacheConfig",
    "CacheStats",
    "CacheStrategy",
    "CachedFunction",
    "Clock",
    "ConfigError",
    "CorruptValueError",
    "FleetCache",
    "FleetCacheError",
    "Health",
    "InvalidArgumentError",
    "InvalidKeyError",
    "KeyLayout",
    "NotFound",
    "PoolExhaustedError",
    "RecursiveComputeError",
    "StreamEntry",
    "SystemClock",
    "ValueEncodeError",
    "ValueTooLargeError",
    "ValueTypeError",
]

__version__ = "0.2.0.dev0"
