"""The per-process reporter: every ``stats_interval`` seconds, this process's snapshot to Redis.

Started by :class:`~fleetcache.core.process.ProcessState`, so it exists once per process
and cache, is rebuilt in a forked child like the connections are (threads do not survive
``fork``: a reporter made in a gunicorn master with ``--preload`` is not in its workers, which
start their own), and stops with :meth:`ProcessState.close` (gunicorn ``worker_exit``),
retiring this worker: its final counters go to its host's retired totals at once, instead
of its last report's after the TTL.

It runs in a daemon thread, a greenlet once gevent has patched ``threading`` (like the
invalidation listener), and never on a request's path: the hit path keeps its plain integer
increments, and the reporter reads them (``CacheStats.of``, O(L1 entries) under L1's lock,
every few seconds). A Redis error costs one report, logged rate-limited; the next beat
tries again.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Protocol, runtime_checkable

import msgspec
import redis

from ..core.clock import Clock
from ..core.l1 import LocalStore
from ..core.stats import CacheStats, Counters
from ..redis.keys import KeyLayout
from .registry import Registry
from .snapshot import TTL_INTERVALS, VERSION, WorkerSnapshot, counters_of, hostname

logger = logging.getLogger("fleetcache")


@runtime_checkable
class Observed(Protocol):
    """What the reporter reads: one process's L1 and counters (the cache's
    :class:`~fleetcache.core.tiers.Tiers`, which is also the bus's receiver)."""

    counters: Counters
    l1: LocalStore


class BusState(Protocol):
    """The part of the invalidation bus the reporter shows."""

    @property
    def connected(self) -> bool: ...

    def renew_if_drained(self) -> bool: ...


class Reporter:
    """Publishes this process's :class:`WorkerSnapshot` every ``interval`` seconds."""

    def __init__(self, client: redis.Redis, keys: KeyLayout, source: Observed, bus: BusState,
                 *, interval: float, max_listener_lag: float, clock: Clock) -> None:
        self._registry = Registry(client, keys)
        self._source = source
        self._bus = bus
        self._interval = interval
        self._ttl = interval * TTL_INTERVALS
        self._lag = max_listener_lag
        self._clock = clock
        self._host = hostname()
        self._pid = os.getpid()
        self._instance = os.urandom(3).hex()
        self._started = time.time()
        self._stored: bytes | None = None  # counters of our last stored snapshot (JSON)
        self._failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the reporting thread (greenlet); the first report goes out at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleetcache-stats",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop reporting and retire this worker (best effort: if Redis cannot be reached,
        its last report is folded in once its TTL has passed)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None:
            return  # never reported: nothing to retire
        try:
            self._registry.retire(self.snapshot(), self._stored)
        except (redis.RedisError, OSError) as exc:
            logger.info("fleetcache: could not retire this worker's stats (%s); they are "
                        "folded in when its snapshot expires", exc)

    def snapshot(self) -> WorkerSnapshot:
        """This process's state now."""
        l1 = self._source.l1
        stats = CacheStats.of(self._source.counters, l1.hits())
        lag: float | None = None
        connected = self._bus.connected
        if connected:
            self._bus.renew_if_drained()  # an idle listener renews only when asked
        lease = l1.fresh_until
        if connected and math.isfinite(lease):
            lag = max(0.0, (self._clock.monotonic() - (lease - self._lag)) * 1000)
        return WorkerSnapshot(
            v=VERSION, host=self._host, pid=self._pid, instance=self._instance,
            started=self._started,
            reported=time.time(), interval=self._interval, l1_size=len(l1),
            l1_capacity=l1.capacity, in_flight=stats.in_flight,
            bus_connected=self._bus.connected, l1_suspended=l1.suspended,
            listener_lag_ms=None if lag is None else round(lag, 3),
            counters=counters_of(stats),
        )

    def report(self) -> None:
        """Publish one snapshot now (the thread's beat; tests call it directly)."""
        snapshot = self.snapshot()
        if self._registry.report(snapshot, self._ttl, self._stored):
            logger.warning("fleetcache: this worker's stats snapshot had expired (paused, or "
                           "cut off from Redis longer than %.1f s); its counters were "
                           "counted once, not twice", self._ttl)
        self._stored = msgspec.json.encode(snapshot.counters)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.report()
                self._failures = 0
            except (redis.RedisError, OSError) as exc:
                self._failures += 1
                if self._failures & (self._failures - 1) == 0:  # 1st, 2nd, 4th, 8th...
                    logger.warning("fleetcache: stats report failed (%d in a row): %s",
                                   self._failures, exc)
            except Exception:  # never let the reporter die silently; it is only statistics
                logger.exception("fleetcache: stats reporter error")
            self._stop.wait(self._interval)
