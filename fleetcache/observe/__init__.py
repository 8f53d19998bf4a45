"""The fleet view: every worker's stats in Redis, read back for ``fleetcache stats`` and
Prometheus.

* :mod:`~fleetcache.observe.snapshot`: what one worker reports (:class:`WorkerSnapshot`);
* :mod:`~fleetcache.observe.report`: the per-process reporter thread (``stats_interval``);
* :mod:`~fleetcache.observe.registry`: the Redis side (liveness, retired totals, one script);
* :mod:`~fleetcache.observe.fleet`: reading it back (:func:`read_fleet`, :class:`FleetView`);
* :mod:`~fleetcache.observe.prometheus`: metrics, the text format, a WSGI app, a collector.

Nothing here imports :mod:`fleetcache.core.front` at import time: the reporter is started
from the process state that the front builds.
"""

from .fleet import FleetView, HostView, read_cache_fleet, read_fleet
from .prometheus import (
    CONTENT_TYPE,
    FleetCollector,
    make_metrics_app,
    metrics_middleware,
    render,
)
from .snapshot import WorkerSnapshot

__all__ = [
    "CONTENT_TYPE",
    "FleetCollector",
    "FleetView",
    "HostView",
    "WorkerSnapshot",
    "make_metrics_app",
    "metrics_middleware",
    "read_cache_fleet",
    "read_fleet",
    "render",
]
