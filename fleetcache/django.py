"""``fleetcache.django``: the documented import path (``"BACKEND":
"fleetcache.django.FleetCacheBackend"``) of :mod:`fleetcache.integrations.django`."""

from .integrations.django import (
    DEFAULT_NAMESPACE,
    NO_EXPIRY_SECONDS,
    FleetCacheBackend,
    close_shared_caches,
)

__all__ = ["DEFAULT_NAMESPACE", "NO_EXPIRY_SECONDS", "FleetCacheBackend", "close_shared_caches"]
