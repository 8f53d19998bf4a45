"""``fleetcache.flask_caching``: the documented import path (``CACHE_TYPE =
"fleetcache.flask_caching.FleetCacheBackend"``) of :mod:`fleetcache.integrations.flask_caching`."""

from .integrations.flask_caching import NO_EXPIRY_SECONDS, FleetCacheBackend

__all__ = ["NO_EXPIRY_SECONDS", "FleetCacheBackend"]
