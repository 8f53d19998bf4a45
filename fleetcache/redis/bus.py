"""The invalidation bus: Redis pub/sub carrying "drop key K" notices between processes.

One listener per process runs in a daemon thread (a greenlet once gevent has patched
``threading``), started on first use and never on a request's critical path.

Missed notices are the failure this module exists for. redis-py reconnects and
resubscribes a PubSub silently, and messages published in the gap are lost, so:

* every ``subscribe`` confirmation (the first included) flushes L1: whatever L1 holds may
  have missed notices before the subscription was (re)established;
* any error on the connection marks the bus down and flushes L1 at once;
* a watchdog PINGs every ``health_check_interval``; a PONG later than
  ``health_check_timeout`` means a half-open or stalled connection: drop it, flush, reconnect
  (redis-py's own ``health_check_interval`` sends PINGs but never waits for the PONG);
* while the bus is down, the cache stores L1 entries with ``degraded_l1_ttl`` only.

So an L1 entry is served at most ``health_check_interval + health_check_timeout`` (detection)
or ``degraded_l1_ttl`` after an invalidation it missed, whichever is larger.

A live but *late* listener is the other way to miss one: under gevent, greenlets that serve
L1 hits never yield, and the listener waits its turn (tens to hundreds of ms on a saturated
CPU, measured in the fleet benchmark). So the listener holds a lease on L1
(``LocalStore.fresh_until``, on the cache's clock): each time it finds its socket drained
it extends L1's trust to ``max_listener_lag`` past that moment. A read that finds the lease
run out waits for the next renewal (:meth:`InvalidationBus.await_lease`): waiting yields,
so the listener gets its turn, and no Redis round trip is spent; past one more
``max_listener_lag`` the read goes to Redis. """

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ..core.clock import Clock
from ..core.codec import Codec
from ..core.config import CacheConfig
from ..core.errors import CorruptValueError
from ..core.stats import Counters

logger = logging.getLogger("fleetcache")

_POLL = 0.1  # longest sleep in get_message: bounds how late stop() and the watchdog run


class _BusStalledError(Exception):
    """The watchdog's PING got no PONG in time."""


class InvalidationBus:
    """Publishes nothing itself (writes do, inside their scripts); listens and applies."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        channel: str,
        codec: Codec,
        config: CacheConfig,
        clock: Clock,
        counters: Counters,
        on_key: Callable[[str], None],
        on_flush: Callable[[bool], None],
        on_lease: Callable[[float], None],
    ) -> None:
        self.sender_id = os.urandom(8)
        self.connected = False
        self._client = client
        self._channel = channel
        self._codec = codec
        self._config = config
        self._clock = clock  # lease stamps only: L1 compares them with its own readings
        self._counters = counters
        self._on_key = on_key
        self._on_flush = on_flush
        self._on_lease = on_lease
        self._stop = threading.Event()
        self._renewed = threading.Event()  # replaced at each renewal; waiters hold the old one
        self._thread: threading.Thread | None = None
        self._ever_connected = False
        self._said_never = False
        self._malformed = 0

    def message(self, key: str | list[str] | None) -> bytes:
        """The notice for ``key`` (a list: several keys; None: flush everything), tagged
        with our sender id.

        Every notice invalidates, fills included: a value can vanish from L2 without one
        (FLUSHDB, maxmemory eviction), and then another process may still hold the old
        one in L1. The third element is always false: version 0.1 listeners read it as
        "only wake waiters", which is what a 0.1 fill meant.
        """
        return self._codec.encode_payload((self.sender_id, key, False))

    def await_lease(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the listener to renew L1's lease; True if it did."""
        return self._renewed.wait(timeout)

    def _renew(self, until: float) -> None:
        self._on_lease(until)
        renewed, self._renewed = self._renewed, threading.Event()
        renewed.set()

    def start(self) -> None:
        """Start the listener (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="fleetcache-invalidation", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener and wait for it to close its connection."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """The listener's thread (greenlet) is alive: started and not yet stopped."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait_connected(self, timeout: float) -> bool:
        """Block until subscribed (for hooks and tests that need a live bus)."""
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.005)
        return self.connected

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.05
            except (redis.RedisError, OSError, _BusStalledError) as exc:
                self._mark_down(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._config.reconnect_backoff)
            except Exception:  # never let the listener die: a dead listener means stale L1
                logger.exception("fleetcache: invalidation listener error; restarting")
                self._mark_down(None)
                self._stop.wait(backoff)
        self.connected = False

    def _listen(self) -> None:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self._channel)
            interval = self._config.health_check_interval
            lag = self._config.max_listener_lag
            poll = min(_POLL, lag / 4)  # early enough that a late wakeup still renews in time
            next_ping = time.monotonic() + interval
            pending: tuple[bytes, float] | None = None  # (token, deadline)
            while not self._stop.is_set():
                now = time.monotonic()
                if pending is not None and now > pending[1]:
                    raise _BusStalledError("no PONG within health_check_timeout")
                if pending is None and now >= next_ping:
                    token = os.urandom(6).hex().encode()
                    pending = (token, now + self._config.health_check_timeout)
                    pubsub.ping(token)
                    next_ping = now + interval
                msg = pubsub.get_message(timeout=0.0)
                if msg is None:
                    # Drained: every notice that reached us before `now` is applied.
                    if self.connected:
                        self._renew(self._clock.monotonic() + lag)
                    wait = min(poll, max(0.0, (pending[1] if pending else next_ping) - now))
                    msg = pubsub.get_message(timeout=wait)
                    if msg is None:
                        continue
                kind = msg["type"]
                if kind == "message":
                    self._apply(msg["data"])
                elif kind == "pong":
                    if pending is not None and msg["data"] == pending[0]:
                        pending = None
                elif kind == "subscribe":
                    self._mark_up()
        finally:
            pubsub.close()  # `connected` is cleared by _mark_down, which logs the transition

    def _apply(self, data: Any) -> None:
        try:
            sender, key, _ = self._codec.decode_payload(data)
        except (CorruptValueError, TypeError, ValueError):
            self._unreadable()
            return
        if sender == self.sender_id:
            return  # our own write: already applied locally, in order
        if key is None:
            self._counters.invalidations_received += 1
            self._on_flush(False)
        elif isinstance(key, str):
            self._counters.invalidations_received += 1
            self._on_key(key)
        elif isinstance(key, list) and all(isinstance(k, str) for k in key):
            self._counters.invalidations_received += len(key)
            for k in key:
                self._on_key(k)
        else:
            self._unreadable()

    def _unreadable(self) -> None:
        # Another version mid-deploy, a stray publisher: it may have been an invalidation,
        # so drop everything rather than risk serving a stale value.
        self._malformed += 1
        if self._malformed & (self._malformed - 1) == 0:  # 1st, 2nd, 4th, 8th...
            logger.warning("fleetcache: unreadable message on %s (%d so far); L1 flushed",
                           self._channel, self._malformed)
        self._on_flush(False)

    def _mark_up(self) -> None:
        # Flush before declaring the bus up: entries stored until now may have missed notices.
        self._on_flush(True)
        self._renew(self._clock.monotonic() + self._config.max_listener_lag)
        if self._ever_connected:
            self._counters.reconnects += 1
            logger.warning("fleetcache: invalidation bus reconnected; L1 flushed")
        self._ever_connected = True
        self.connected = True

    def _mark_down(self, exc: BaseException | None) -> None:
        was_connected = self.connected
        self.connected = False
        self._on_flush(True)
        self._renew(math.inf)  # no lease without a listener: degraded_l1_ttl bounds L1
        reason = f"{type(exc).__name__}: {exc}" if exc else "error"
        if was_connected:
            logger.warning("fleetcache: invalidation bus down (%s); L1 flushed, "
                           "reconnecting", reason)
        elif not self._ever_connected and not self._said_never:
            # Once: a bus that never comes up (Redis down at start, an ACL user without
            # channel permission) would otherwise be visible in health() only.
            self._said_never = True
            logger.warning("fleetcache: invalidation bus cannot subscribe (%s); L1 entries "
                           "live degraded_l1_ttl until it does", reason)
