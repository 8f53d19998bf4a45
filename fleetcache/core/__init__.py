"""The cache's policies: the front, L1, the read path, writes, single-flight, codec,
settings, errors, counters, and the seams (clock, L2 store, bus, fill lock) behind them.

Nothing here opens a socket at import; the Redis side is :mod:`fleetcache.redis`.
"""
