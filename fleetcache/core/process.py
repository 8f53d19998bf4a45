"""Everything of a cache that belongs to one process: connections, listener, locks, waiters.

Built on first use (lazily, so a cache made before fork or before gevent's monkey-patching
gets real, patched objects in the process that uses it) and dropped, never shared, in a
forked child.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from ..observe.report import Observed, Reporter
from ..redis.bus import InvalidationBus
from ..redis.client import make_client
from ..redis.cluster import SlotWatch, slot_home
from ..redis.keys import KeyLayout
from ..redis.lane import CommandLane
from ..redis.locks import FleetLock
from ..redis.quorum import QuorumLocks, QuorumStore
from ..redis.replay import ReplayLog
from ..redis.sentinel import PrimaryWatch, SentinelLane, sentinel_pool
from ..redis.store import RedisStore
from ..redis.streams import Streams
from .clock import Clock
from .codec import Codec
from .config import CacheConfig
from .flights import WAIT_SLACK, Flights
from .keyed_locks import KeyedLocks
from .protocols import Bus, BusReceiver, FillLock, L2Store
from .stats import Counters


class ProcessState:
    """The process-bound half of a :class:`~fleetcache.FleetCache`.

    ``client`` is the application's own when it passed one (then :meth:`close` leaves its
    pool alone), else one built from the settings.
    """

    def __init__(
        self, config: CacheConfig, keys: KeyLayout, codec: Codec, clock: Clock,
        counters: Counters, *, client: redis.Redis | None, receiver: BusReceiver,
    ) -> None:
        self._owns_client = client is None
        self.client = make_client(config) if client is None else client
        self._lock_timeout = config.lock_timeout
        self._keys = keys
        pool = self.client.connection_pool
        # Hot commands skip redis-py's per-command pool checkout (fleetcache.redis.lane); at
        # most half the pool idles there, and blocking stream reads borrow those first.
        # Under Sentinel the lane never keeps a connection to a former primary, and the
        # listener's watchdog asks where the primary is (fleetcache.redis.sentinel).
        managed = sentinel_pool(self.client)
        lane = (CommandLane if managed is None else SentinelLane)(
            pool, keep=max(1, pool.max_connections // 2))
        store = {"fill_lease_ms": int(config.fill_lease * 1000),
                 "log_length": config.replay_log_length,
                 "log_age_ms": int(config.replay_log_age * 1000)}
        if config.lock_masters:  # the fill lock by quorum (fleetcache.redis.quorum)
            quorum = QuorumLocks([make_client(config.replace(url=url, lock_masters=(),
                                                             cluster=False))
                                  for url in config.lock_masters])
            self.l2: L2Store = QuorumStore(self.client, keys, lane, quorum=quorum, **store)
        else:
            self.l2 = RedisStore(self.client, keys, lane, **store)
        self.streams = Streams(self.client, keys, lane, config.stream_timeout_margin)
        # One compute of a key at a time in this process, its outcome shared.
        self.flights = Flights(patience=config.lock_timeout + WAIT_SLACK)
        self.writes = KeyedLocks()  # orders this process's writes of one key
        self.waiters: dict[str, threading.Event] = {}
        # Background refreshes of stale values (fleetcache.core.refresh): keys refreshing
        # now, and keys whose refresh raised, with when this process may try again.
        self.refresh_lock = threading.Lock()
        self.refreshing: dict[str, threading.Event] = {}  # set when that refresh ends
        self.throttled: dict[str, float] = {}
        # Refreshes waiting for the dispatcher, which starts their threads (Thread.start
        # waits for the new thread to run: a caller must not), and wakes it.
        self.refresh_queue: deque[Callable[[], None]] = deque()
        self.refresh_wake = threading.Event()
        self.refresh_dispatcher: threading.Thread | None = None
        self.closed = False
        self.bus: Bus = InvalidationBus(
            self.client, channel=keys.channel, codec=codec, config=config, clock=clock,
            counters=counters, receiver=receiver,
            primary_moved=self._primary_watch(managed, lane),
            log=(ReplayLog(self.client, keys, config.replay_log_length)
                 if config.replay_log_length else None),
        )
        self.bus.start()
        # This process's stats snapshot for the fleet view (fleetcache.observe.report). The
        # receiver is the cache's Tiers: it holds the L1 and counters the reporter reads.
        self.reporter: Reporter | None = None
        if config.stats_interval and isinstance(receiver, Observed):
            self.reporter = Reporter(
                self.client, keys, receiver, self.bus, interval=config.stats_interval,
                max_listener_lag=config.max_listener_lag, clock=clock)
            self.reporter.start()

    def _primary_watch(self, managed: SentinelConnectionPool | None,
                       lane: CommandLane) -> Callable[[Any], bool] | None:
        """What the listener asks on each watchdog beat whether its connection still
        leads to the primary: the sentinels (Sentinel), the slot's owner (Cluster)."""
        if managed is not None:
            return PrimaryWatch(managed, lane)
        home = slot_home(self.client)
        return None if home is None else SlotWatch(home, lane, self._keys.epoch)

    def fill_lock(self, key: str) -> FillLock:
        """A fresh fleet lock on ``key``'s compute (one per acquisition)."""
        return FleetLock(self.client, self._keys.lock_name(key), self._lock_timeout)

    def wake_waiter(self, key: str) -> None:
        """Wake this process's waiter for ``key`` (a fill notice or a write arrived)."""
        event = self.waiters.get(key)
        if event is not None:
            event.set()

    def close(self) -> None:
        """Stop the listener and close every connection (of a pool we built)."""
        self.closed = True
        self.refresh_wake.set()  # the refresh dispatcher, if any, ends
        if self.reporter is not None:  # retires this worker while the pool is still open
            self.reporter.stop()
        self.bus.stop()
        self.l2.close()
        if self._owns_client:
            self.client.connection_pool.disconnect()
