"""fleetcache: a two-tier (in-process L1 + Redis L2) cache for WSGI fleets.

Every worker keeps a bounded L1; writes and deletes drop the key from every worker's L1
through Redis pub/sub; cold keys are computed once per fleet. See README.md.
"""

from .cache import FleetCache
from .config import CacheConfig
from .decorator import CachedFunction
from .errors import (
    BackendError,
    BackendUnavailableError,
    CacheClosedError,
    ConfigError,
    CorruptValueError,
    FleetCacheError,
    InvalidArgumentError,
    InvalidKeyError,
    ValueEncodeError,
    ValueTooLargeError,
)
from .stats import CacheStats, Health
from .strategy import CacheStrategy
from .streams import StreamEntry

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CacheClosedError",
    "CacheConfig",
    "CacheStats",
    "CacheStrategy",
    "CachedFunction",
    "ConfigError",
    "CorruptValueError",
    "FleetCache",
    "FleetCacheError",
    "Health",
    "InvalidArgumentError",
    "InvalidKeyError",
    "StreamEntry",
    "ValueEncodeError",
    "ValueTooLargeError",
]

__version__ = "0.1.0"
