"""Prometheus metrics of the whole fleet, built from the fleet view, with a ``host`` label.

Why a collector over the fleet view and not prometheus_client's multiprocess mode: that
mode needs a shared directory per host (``PROMETHEUS_MULTIPROC_DIR``), one scrape target
per host, cleanup of dead workers' files, and an mmap write on every increment. The fleet
view is already in Redis for ``fleetcache stats``: reading it gives every host in one scrape
from any worker (or from ``fleetcache metrics``), and the hit path keeps its plain integer
increments (an L1 hit costs one ``+= 1`` on its entry; the reporter thread reads them every
``stats_interval``). The price: values are up to one ``stats_interval`` old.

Counters stay monotonic across recycled workers: each host's ``_total`` is its live
workers' counters plus its retired totals (see :mod:`fleetcache.observe.registry`). What
the last interval of a worker that died without closing served is lost, never counted
twice; a host's series end ``RETAIN`` (24 h) after its last worker did.

The text exposition format is written here (no dependency, so ``fleetcache metrics`` and
:func:`make_metrics_app` work without prometheus_client); :class:`FleetCollector` hands the
same families to prometheus_client's registry for apps that already run one (the
``prometheus`` extra).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from .fleet import FleetView, HostView, read_cache_fleet
from .snapshot import COUNTERS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ..core.front import FleetCache

logger = logging.getLogger("fleetcache")

#: The Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    """One metric: ``name`` as exposed (counters end in ``_total``), its samples."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[Labels, float]]


_HELP = {
    "misses": "Lookups found in neither L1 nor L2.",
    "computes": "Calls of a get_or_compute/cached function.",
    "stale_served": "Values served past their fresh time (stale_ttl).",
    "lock_waits": "Waits for another process's compute of a key.",
    "invalidations_sent": "Invalidation notices sent by writes.",
    "invalidations_received": "Keys invalidated by notices from other processes.",
    "redis_errors": "Redis calls that failed (reads served as misses).",
    "promotions": "L2 hits stored into L1.",
    "listener_waits": "L1 hits held back until a late invalidation listener caught up.",
    "corrupt_values": "Foreign or damaged L2 entries read as misses.",
    "reconnects": "Invalidation bus recoveries.",
    "fills_revoked": "Computed values not stored: the key was written during the compute.",
    "uncacheable_values": "Computed values that could not be encoded (kept in L1 only).",
    "l1_evictions": "Entries L1 let go to make room.",
    "l1_rejections": "Reads and writes L1 did not keep (its entries were asked for more).",
    "refreshes": "Background recomputes of stale values started.",
    "refresh_errors": "Background recomputes that raised (stale value served instead).",
    "replays": "Bus gaps covered from the replay log (L1 kept).",
    "invalidations_replayed": "Keys invalidated by replays of the log.",
    "l1_flushes": "Times a process dropped its whole L1.",
    "l1_suspended_s": "Seconds L1 spent held back waiting for a replay.",
}


def _counter_name(field: str) -> str:
    if field == "l1_suspended_s":
        return "fleetcache_l1_suspended_seconds_total"
    return f"fleetcache_{field}_total"


def families(view: FleetView) -> list[Family]:
    """Every metric of ``view``, one sample per host (hosts with retired totals only keep
    their series, with 0 workers)."""
    hosts = sorted(view.hosts.values(), key=lambda h: h.host)

    def per_host(value: Callable[[HostView], float]) -> list[tuple[Labels, float]]:
        return [((("host", h.host),), value(h)) for h in hosts]

    out = [Family("fleetcache_hits_total", "counter",
                  "Lookups answered from a tier (l1: this process's memory, l2: Redis).",
                  [((("host", h.host), ("tier", tier)), h.total(f"{tier}_hits"))
                   for h in hosts for tier in ("l1", "l2")])]
    for name in COUNTERS:
        if name in ("l1_hits", "l2_hits"):
            continue
        out.append(Family(_counter_name(name), "counter", _HELP.get(name, name),
                          per_host(functools.partial(HostView.total, name=name))))
    out += [
        Family("fleetcache_l1_entries", "gauge", "Entries in the L1 of the live workers.",
               per_host(lambda h: h.live("l1_size"))),
        Family("fleetcache_workers", "gauge", "Live worker processes (reported within "
               "their TTL).", per_host(lambda h: len(h.workers))),
        Family("fleetcache_computes_in_flight", "gauge", "Computes running now.",
               per_host(lambda h: h.live("in_flight"))),
        Family("fleetcache_bus_disconnected_workers", "gauge",
               "Live workers whose invalidation bus is down.",
               per_host(lambda h: sum(not w.bus_connected for w in h.workers))),
        Family("fleetcache_listener_lag_seconds", "gauge",
               "Largest invalidation listener lag sampled at the workers' last reports.",
               per_host(lambda h: max((w.listener_lag_ms or 0.0 for w in h.workers),
                                      default=0.0) / 1000)),
    ]
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(view: FleetView) -> str:
    """The text exposition format (0.0.4) of :func:`families`."""
    lines: list[str] = []
    for family in families(view):
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{family.name}{{{text}}} {_number(value)}")
    return "\n".join(lines) + "\n"


class FleetCollector:
    """A prometheus_client collector of the fleet view (the ``prometheus`` extra):
    ``REGISTRY.register(FleetCollector(cache))`` in an app that already exposes its own
    metrics. Each scrape reads the fleet view once; a Redis error yields no samples (and is
    logged) rather than failing the app's whole scrape."""

    def __init__(self, cache: FleetCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415 - the optional extra
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        try:
            view = read_cache_fleet(self._cache)
        except (redis.RedisError, OSError) as exc:
            logger.warning("fleetcache: metrics: fleet view unreadable: %s", exc)
            return
        for family in families(view):
            label_names = [k for k, _ in family.samples[0][0]] if family.samples else ["host"]
            if family.kind == "counter":
                metric: Any = CounterMetricFamily(family.name.removesuffix("_total"),
                                                  family.help, labels=label_names)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=label_names)
            for labels, value in family.samples:
                metric.add_metric([v for _, v in labels], value)
            yield metric


def make_metrics_app(cache: FleetCache | Callable[[], FleetCache]) -> WSGIApplication:
    """A WSGI app answering every request with the fleet's metrics (mount it at
    ``/metrics``; any worker answers for the whole fleet). ``cache`` may be a callable
    returning the cache, for frameworks that build theirs lazily (Django's ``caches``).
    503 with the reason when Redis cannot be read."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        target = cache() if callable(cache) else cache  # a FleetCache is not callable
        try:
            body = render(read_cache_fleet(target))
        except (redis.RedisError, OSError) as exc:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"fleetcache: fleet view unreadable: {exc}\n".encode()]
        data = body.encode()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE),
                                  ("Content-Length", str(len(data)))])
        return [data]

    return app


def metrics_middleware(app: WSGIApplication, cache: FleetCache | Callable[[], FleetCache],
                       path: str = "/metrics") -> WSGIApplication:
    """Wrap any WSGI app (Django's ``get_wsgi_application()``, Pyramid, ...) so that
    ``path`` serves :func:`make_metrics_app` and every other path reaches ``app``."""
    metrics = make_metrics_app(cache)

    def wrapper(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == path:
            return metrics(environ, start_response)
        return app(environ, start_response)

    return wrapper
