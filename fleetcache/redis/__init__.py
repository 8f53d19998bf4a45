"""The Redis side: client factory, key layout, L2 store, command lane, invalidation bus,
fill lock and streams. Implements the seams of :mod:`fleetcache.core.protocols`.

(Inside this package ``import redis`` is still redis-py: imports are absolute.)
"""
