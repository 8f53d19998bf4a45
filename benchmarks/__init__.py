"""fleetcache benchmark suite: ``python -m benchmarks [--quick] [--only NAME]``.

Deliberately empty of imports: ``python -m benchmarks.stampede --gevent`` must be able to
monkey-patch before anything opens a socket or makes a lock (see stampede.py).
"""
