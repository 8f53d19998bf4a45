"""gunicorn settings of the fleet benchmark: fleetcache's hooks, plus a log dump at exit.

    gunicorn -c benchmarks/apps/gunicorn_conf.py benchmarks.apps.fleet_app:app

``FLEETCACHE_REDIS_URL`` is always set by the benchmark (its private server), so
``on_starting`` starts no embedded server; the hooks are the ones an app would use.
"""

import os

from fleetcache.gunicorn import (  # noqa: F401 - gunicorn looks these hooks up by name
    on_exit,
    on_starting,
    post_fork,
    post_worker_init,
)
from fleetcache.gunicorn import worker_exit as _fleetcache_worker_exit

bind = os.environ.get("BENCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("BENCH_WORKERS", "4"))
worker_class = os.environ.get("BENCH_WORKER_CLASS", "gthread")
threads = int(os.environ.get("BENCH_THREADS", "8"))
worker_connections = int(os.environ.get("BENCH_WORKER_CONNECTIONS", "1000"))
preload_app = True
keepalive = 30
graceful_timeout = 15
timeout = 60
backlog = 2048
accesslog = None
loglevel = "warning"


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Dump the request logs for the stale-read analysis, then fleetcache's own hook."""
    try:
        from benchmarks.apps import fleet_app  # noqa: PLC0415

        fleet_app.dump()
    finally:
        _fleetcache_worker_exit(server, worker)
