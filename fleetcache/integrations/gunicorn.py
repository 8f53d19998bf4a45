"""gunicorn server hooks: import them into ``gunicorn.conf.py`` as they are.

    from fleetcache.gunicorn import on_starting, post_fork, post_worker_init, worker_exit, on_exit

* ``on_starting`` (master): with no Redis URL configured (``FLEETCACHE_REDIS_URL`` and
  ``REDIS_URL`` unset, or ``embedded``), start a private server on a unix socket and export
  its URL, so the workers forked later find it in their environment.
* ``post_fork`` (worker): connections and listener are reset by fleetcache's at-fork handler
  already; for thread-based workers the listener is started now, eagerly. gevent workers
  monkey-patch *after* ``post_fork``, so their listener must wait for ``post_worker_init``:
  a socket or thread made before patching would block the hub.
* ``post_worker_init`` (worker, app loaded, gevent patched): connect every cache.
* ``worker_exit`` (worker): stop listeners and close connections cleanly.
* ``on_exit`` (master): stop the embedded server.

Without any hook, caches still work: they connect lazily on first use after fork.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..core import fork
from ..core.config import configured_url
from ..core.front import FleetCache
from ..server.embedded import EmbeddedServer

logger = logging.getLogger("fleetcache")

_server: EmbeddedServer | None = None


def _caches() -> list[FleetCache]:
    return [obj for obj in fork.live() if isinstance(obj, FleetCache)]


def _is_gevent_worker(worker: Any) -> bool:
    return any(cls.__module__.startswith("gunicorn.workers.ggevent")
               for cls in type(worker).__mro__)


def _connect_all() -> None:
    for cache in _caches():
        try:
            cache.connect()
        except Exception:  # a bad URL must not kill the worker; requests will report it
            logger.exception("fleetcache: could not connect %r", cache)


def on_starting(server: Any) -> None:
    """Start the embedded server when no Redis URL is configured."""
    global _server
    if configured_url() is not None:
        return
    _server = EmbeddedServer()  # names the extra to install if no server binary is found
    os.environ["FLEETCACHE_REDIS_URL"] = _server.start()
    logger.info("fleetcache: embedded server %s (pid %s) on %s", _server.binary, _server.pid,
                _server.socket_path)


def post_fork(server: Any, worker: Any) -> None:
    """Start listeners now for thread-based workers; gevent workers wait for patching."""
    if not _is_gevent_worker(worker):
        _connect_all()


def post_worker_init(worker: Any) -> None:
    """Connect every cache once the app is loaded (and gevent has patched)."""
    _connect_all()


def worker_exit(server: Any, worker: Any) -> None:
    """Close every cache of the exiting worker."""
    for cache in _caches():
        cache.close()


def on_exit(server: Any) -> None:
    """Stop the embedded server, if this master started one."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None
        os.environ.pop("FLEETCACHE_REDIS_URL", None)
