"""What one worker process says about itself: a :class:`WorkerSnapshot`, stored as JSON.

JSON rather than MessagePack because operators read these with ``redis-cli`` too, and the
fold script (:mod:`fleetcache.observe.registry`) decodes the ``counters`` object with the
server's own ``cjson``. Decoding is typed (msgspec): a foreign or damaged entry fails
validation and is skipped by readers instead of turning up as nonsense.
"""

from __future__ import annotations

import socket
from dataclasses import fields
from typing import Any

import msgspec

from ..core.stats import CacheStats

#: Snapshot format version; readers skip other versions (a deploy in progress may mix).
VERSION = 1

#: Every counter of :class:`~fleetcache.core.stats.CacheStats`: monotonic per process, so
#: a dead worker's last values can be added to its host's retired totals. ``in_flight`` is
#: a gauge (computes running now) and is reported beside them.
COUNTERS: tuple[str, ...] = tuple(f.name for f in fields(CacheStats) if f.name != "in_flight")

#: A snapshot lives (is shown, counted as a live worker) this many report intervals.
TTL_INTERVALS = 3.0


class WorkerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One worker's state at one report (``reported``, seconds since the epoch, its clock).

    ``listener_lag_ms`` is how long before the report the invalidation listener last had
    every notice that had reached its socket applied (L1's lease is renewed each time the
    socket is found drained, by the listener or, while it sleeps, by a reader or the
    report itself): the most a notice arriving then would have waited in this process.
    None while the bus is down (no lease). It is a sample, not a maximum.
    """

    v: int
    host: str
    pid: int
    instance: str  # random per reporter: two caches of one process on one namespace
    started: float
    reported: float
    interval: float
    l1_size: int
    l1_capacity: int
    in_flight: int
    bus_connected: bool
    l1_suspended: bool
    listener_lag_ms: float | None
    counters: dict[str, float]

    @property
    def worker(self) -> str:
        """``host:pid:instance``, the worker's field in the registry."""
        return f"{worker_id(self.host, self.pid)}:{self.instance}"

    def counter(self, name: str) -> int | float:
        """One counter (0 if this snapshot's writer did not know it); floats stay floats
        (``l1_suspended_s``), the rest are ints."""
        value = self.counters.get(name, 0)
        return value if name == "l1_suspended_s" else int(value)

    def row(self) -> dict[str, Any]:
        """The flat form ``fleetcache stats --json`` prints: every field and counter at
        the top level, plus ``lookups`` and ``hit_rate``."""
        row: dict[str, Any] = {
            "host": self.host, "pid": self.pid, "started": self.started,
            "reported": self.reported, "interval": self.interval, "l1_size": self.l1_size,
            "l1_capacity": self.l1_capacity, "in_flight": self.in_flight,
            "bus_connected": self.bus_connected, "l1_suspended": self.l1_suspended,
            "listener_lag_ms": self.listener_lag_ms,
        }
        row.update((name, self.counter(name)) for name in COUNTERS)
        lookups = row["l1_hits"] + row["l2_hits"] + row["misses"]
        row["lookups"] = lookups
        row["hit_rate"] = (row["l1_hits"] + row["l2_hits"]) / lookups if lookups else 0.0
        return row


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(WorkerSnapshot).decode


def encode(snapshot: WorkerSnapshot) -> bytes:
    """The JSON stored in the registry."""
    return _encode(snapshot)


def decode(blob: bytes) -> WorkerSnapshot | None:
    """A stored snapshot; None for anything that is not one of this version."""
    try:
        snapshot = _decode(blob)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return snapshot if snapshot.v == VERSION else None


def worker_id(host: str, pid: int) -> str:
    """``host:pid``: one process (the registry adds a random instance id per reporter, so
    two caches of one process on one namespace, or a reused pid, never share a field)."""
    return f"{host}:{pid}"


def hostname() -> str:
    """This machine's name as the ``host`` label (the container's, in a container)."""
    return socket.gethostname() or "unknown"


def counters_of(stats: CacheStats) -> dict[str, float]:
    """Every counter of ``stats`` by name."""
    return {name: getattr(stats, name) for name in COUNTERS}
