"""Reading the fleet back: every live worker's snapshot, and each host's retired totals.

One script call (:meth:`Registry.read`) folds the workers past their TTL into their host's
retired totals, then returns the rest: memory is bounded by the live workers and hosts,
never by the size of the cache's keyspace (no SCAN over values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from ..core.config import CacheConfig
from ..redis.client import make_client
from ..redis.keys import KeyLayout
from .registry import Registry
from .snapshot import COUNTERS, WorkerSnapshot, decode

if TYPE_CHECKING:
    from ..core.front import FleetCache

Numbers = dict[str, float]


@dataclass(frozen=True)
class HostView:
    """One host: its live workers, and the counters of its workers gone (retired)."""

    host: str
    workers: list[WorkerSnapshot] = field(default_factory=list)
    retired: Numbers = field(default_factory=dict)

    def live(self, name: str) -> float:
        """``name`` (a counter, ``l1_size`` or ``in_flight``) summed over live workers."""
        if name in ("l1_size", "in_flight"):
            return float(sum(getattr(w, name) for w in self.workers))
        return sum(w.counter(name) for w in self.workers)

    def total(self, name: str) -> float:
        """A counter over every worker this host ever reported (live + retired): what a
        Prometheus ``_total`` exposes, monotonic across recycled workers."""
        return self.live(name) + self.retired.get(name, 0.0)


@dataclass(frozen=True)
class FleetView:
    """Every live worker of a namespace on every host, as one read saw them."""

    server_time: float  # the server's clock, seconds since the epoch
    hosts: dict[str, HostView]

    @property
    def workers(self) -> list[WorkerSnapshot]:
        """Live workers, by host then pid."""
        return [w for host in sorted(self.hosts) for w in self.hosts[host].workers]

    def totals(self) -> dict[str, Any]:
        """Sums over the live workers: every counter, ``l1_size``, ``in_flight``,
        ``workers``, ``lookups`` and ``hit_rate`` (what ``fleetcache stats`` shows)."""
        workers = self.workers
        totals: dict[str, Any] = {"workers": len(workers)}
        for name in ("l1_size", "l1_capacity", "in_flight"):
            totals[name] = sum(getattr(w, name) for w in workers)
        for name in COUNTERS:
            totals[name] = sum(w.counter(name) for w in workers)
        lookups = totals["l1_hits"] + totals["l2_hits"] + totals["misses"]
        totals["lookups"] = lookups
        totals["hit_rate"] = (totals["l1_hits"] + totals["l2_hits"]) / lookups if lookups \
            else 0.0
        return totals

    def to_json(self) -> dict[str, Any]:
        """``{"workers": [...], "totals": {...}, "retired": {host: {...}}, ...}``: the
        ``fleetcache stats --json`` document."""
        return {
            "server_time": self.server_time,
            "workers": [w.row() for w in self.workers],
            "totals": self.totals(),
            "retired": {host: _numbers(view.retired) for host, view in sorted(self.hosts.items())
                        if view.retired},
        }


def _numbers(values: Numbers) -> dict[str, int | float]:
    return {name: value if name == "l1_suspended_s" else int(value)
            for name, value in sorted(values.items())}


def parse(now_ms: int, workers: list[bytes], retired: list[bytes]) -> FleetView:
    """A :class:`FleetView` from :meth:`Registry.read`'s flat hash replies (entries that
    are not snapshots of this version are skipped)."""
    hosts: dict[str, HostView] = {}

    def host_view(name: str) -> HostView:
        view = hosts.get(name)
        if view is None:
            view = hosts[name] = HostView(name)
        return view

    for blob in workers[1::2]:
        snapshot = decode(blob)
        if snapshot is not None:
            host_view(snapshot.host).workers.append(snapshot)
    for raw_name, raw_value in zip(retired[::2], retired[1::2], strict=True):
        host, _, counter = raw_name.decode(errors="replace").rpartition("|")
        if not counter:  # "host|": when the host was last seen, not a counter
            continue
        try:
            value = float(raw_value)
        except ValueError:
            continue
        host_view(host).retired[counter] = value
    for view in hosts.values():
        view.workers.sort(key=lambda w: w.pid)
    return FleetView(now_ms / 1000.0, hosts)


def read_fleet(client: redis.Redis, keys: KeyLayout, now_ms: int | None = None) -> FleetView:
    """The fleet view of the namespace of ``keys`` (dead workers folded first).

    Raises redis-py's errors (the callers map them: the CLI prints one line, the metrics
    app answers 503).
    """
    return parse(*Registry(client, keys).read(now_ms))


def read_cache_fleet(cache: FleetCache) -> FleetView:
    """:func:`read_fleet` on ``cache``'s own connections and namespace."""
    # The process's client (opened on first use): no second pool for the metrics endpoint.
    client = cache._tiers.process().client
    return read_fleet(client, cache.keys)


def client_for(url: str, namespace: str) -> tuple[redis.Redis, KeyLayout]:
    """A client with fleetcache's short timeouts, and the layout of ``namespace`` (for the
    CLI, which needs no cache, no listener and no reporter of its own)."""
    config = CacheConfig(url=url, namespace=namespace)
    return make_client(config), KeyLayout(namespace, hash_tags=config.is_cluster)
