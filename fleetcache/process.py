"""Everything of a cache that belongs to one process: connections, listener, locks, waiters.

Built on first use (lazily, so a cache made before fork or before gevent's monkey-patching
gets real, patched objects in the process that uses it) and dropped, never shared, in a
forked child.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .bus import InvalidationBus
from .codec import Codec
from .config import CacheConfig
from .l2 import RedisStore, make_client
from .locks import KeyedLocks
from .stats import Counters
from .streams import Streams


class ProcessState:
    """The process-bound half of a :class:`~fleetcache.FleetCache`."""

    def __init__(
        self, config: CacheConfig, codec: Codec, counters: Counters, *,
        on_invalidate: Callable[[str], None], on_flush: Callable[[], None],
        on_lease: Callable[[float], None],
    ) -> None:
        self.client = make_client(config)
        self.l2 = RedisStore(self.client, config.namespace)
        self.streams = Streams(self.client, config.namespace, config.stream_timeout_margin)
        self.flights = KeyedLocks()  # coalesces computes of one key
        self.writes = KeyedLocks()  # orders this process's writes of one key
        self.waiters: dict[str, threading.Event] = {}
        self.lock_prefix = f"{config.namespace}:lock:"
        self.bus = InvalidationBus(
            self.client, channel=self.l2.channel, codec=codec, config=config,
            counters=counters, on_key=on_invalidate, on_fill=self.wake_waiter,
            on_flush=on_flush, on_lease=on_lease,
        )
        self.bus.start()

    def wake_waiter(self, key: str) -> None:
        """Wake this process's waiter for ``key`` (a fill notice or a write arrived)."""
        event = self.waiters.get(key)
        if event is not None:
            event.set()

    def close(self) -> None:
        """Stop the listener and close every connection."""
        self.bus.stop()
        self.l2.close()
        self.client.connection_pool.disconnect()
