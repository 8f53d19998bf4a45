"""``fleetcache.gunicorn``: the documented import path of :mod:`fleetcache.integrations.gunicorn`.

gunicorn looks hooks up by name in the config module, so ``gunicorn -c
python:fleetcache.gunicorn`` (or ``from fleetcache.gunicorn import ...`` in a
``gunicorn.conf.py``) picks up exactly these five.
"""

from .integrations.gunicorn import on_exit, on_starting, post_fork, post_worker_init, worker_exit

__all__ = ["on_exit", "on_starting", "post_fork", "post_worker_init", "worker_exit"]
