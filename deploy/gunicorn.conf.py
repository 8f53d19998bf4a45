"""gunicorn settings for the fleetcache demo app (every value overridable from the env).

    gunicorn -c deploy/gunicorn.conf.py fleetcache.cli.demo_app:app

With FLEETCACHE_REDIS_URL unset (or "embedded") the master starts a private server on a
unix socket (fleetcache.gunicorn.on_starting) and stops it on exit.
"""

import os

from fleetcache.gunicorn import (  # noqa: F401 - gunicorn looks these hooks up by name
    on_exit,
    on_starting,
    post_fork,
    post_worker_init,
    worker_exit,
)

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
# gunicorn silently turns a sync worker with threads > 1 into gthread.
threads = int(os.environ.get("GUNICORN_THREADS", "8" if worker_class == "gthread" else "1"))
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "100"))
# Preloading imports ssl & co. before gevent patches them (gevent warns); off for gevent.
preload_app = os.environ.get("GUNICORN_PRELOAD", "0" if worker_class == "gevent" else "1") == "1"
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
graceful_timeout = 10
timeout = 30
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
