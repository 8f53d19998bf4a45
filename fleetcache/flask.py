"""``fleetcache.flask``: the documented import path of :mod:`fleetcache.integrations.flask`."""

from .integrations.flask import (
    EXTENSION_KEY,
    FleetCacheExtension,
    cache_for,
    cache_options,
    current_cache,
    metrics_view,
    register_metrics,
)

__all__ = ["EXTENSION_KEY", "FleetCacheExtension", "cache_for", "cache_options", "current_cache",
           "metrics_view", "register_metrics"]
