"""The invalidation bus: Redis pub/sub carrying "drop key K" notices between processes.

One listener per process runs in a daemon thread (a greenlet once gevent has patched
``threading``), started on first use and never on a request's critical path.

Missed notices are the failure this module exists for. redis-py reconnects and
resubscribes a PubSub silently, and messages published in the gap are lost, so:

* any error on the connection marks the bus down and *suspends* L1 at once: it serves
  nothing it held, and drops nothing (:meth:`~fleetcache.core.l1.LocalStore.suspend`);
* a watchdog PINGs every ``health_check_interval``; a PONG later than
  ``health_check_timeout`` means a half-open or stalled connection: drop it, suspend,
  reconnect (redis-py's own ``health_check_interval`` sends PINGs but never waits for the
  PONG);
* at every ``subscribe`` confirmation the listener catches up from the replay log
  (:mod:`fleetcache.redis.replay`): it applies every notice logged after the last one it
  applied, then L1 serves again; where the log cannot cover the gap (trimmed past its
  position, gone, another server or another epoch) it flushes L1 instead;
* the same watchdog beat reads the namespace's epoch: an operator's ``FLUSHALL`` (or a
  restart without persistence) publishes nothing, and is caught there;
* while the bus is down, the cache stores L1 entries with ``degraded_l1_ttl`` only.

So an L1 entry is served at most ``health_check_interval + health_check_timeout`` (detection)
or ``degraded_l1_ttl`` after an invalidation it missed, whichever is larger.

A live but *late* listener is the other way to miss one: under gevent, greenlets that serve
L1 hits never yield, and the listener waits its turn (tens to hundreds of ms on a saturated
CPU, measured in the fleet benchmark). So the listener holds a lease on L1
(``LocalStore.fresh_until``, on the cache's clock): each time it finds its socket drained
it extends L1's trust to ``max_listener_lag`` past that moment. A read that finds the lease
run out renews it itself if the listener is idle and its socket holds nothing
(:meth:`InvalidationBus.renew_if_drained`: one non-blocking ``select``); otherwise a notice
is waiting or being applied, and the read waits for the listener's renewal
(:meth:`InvalidationBus.await_lease`): waiting yields, so the listener gets its turn, and no
Redis round trip is spent; past one more ``max_listener_lag`` the read goes to Redis.

Readers renewing is what lets an idle listener sleep: it wakes for a notice, a watchdog
beat or at most every 100 ms (to see ``stop()``), not every ``max_listener_lag / 4`` to keep
the lease alive. On the benchmark VM a thread's timed wakeup costs about 100 us of CPU
(measured: ``poll`` with a 12.5 ms timeout, 103 us of thread time each), so the 80 renewals
a second of a listener that woke to renew cost each idle worker 14-22 ms of CPU a second.

A published notice is ``<log entry id>|<MessagePack notice>`` (the id is empty when the
writer keeps no log). """

from __future__ import annotations

import logging
import math
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ..core.clock import Clock
from ..core.codec import Codec
from ..core.config import CacheConfig
from ..core.errors import CorruptValueError
from ..core.protocols import BusReceiver, Target
from ..core.stats import Counters
from .replay import Identity, Position, ReplayLog, parse_position, version_of

logger = logging.getLogger("fleetcache")

_POLL = 0.1  # longest sleep of the listener: bounds how late stop() and the watchdog run


def _unpatched_select() -> Callable[..., Any]:
    """``select.select`` as the OS gives it, even after gevent patched the module: gevent's
    yields to the hub even with a zero timeout, and a reader renewing the lease must not."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "select")  # type: ignore[no-any-return]
    return select.select


def _has_input(sock: Any, select_fn: Callable[..., Any], timeout: float = 0.0) -> bool:
    """Whether ``sock`` holds bytes not yet read (TLS: decrypted bytes count too); waits
    up to ``timeout`` for some."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    return bool(select_fn([sock], [], [], timeout)[0])


class _BusStalledError(Exception):
    """The watchdog's PING got no PONG in time."""


class _PrimaryMovedError(_BusStalledError):
    """The primary moved away from the listener's connection (Sentinel, Cluster)."""



class InvalidationBus:
    """Publishes nothing itself (writes do, inside their scripts); listens and applies."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        channel: str,
        log: ReplayLog | None,
        codec: Codec,
        config: CacheConfig,
        clock: Clock,
        counters: Counters,
        receiver: BusReceiver,
        primary_moved: Callable[[Any], bool] | None = None,
    ) -> None:
        self.sender_id = os.urandom(8)
        # Sentinel and Cluster (fleetcache.redis.sentinel.PrimaryWatch,
        # fleetcache.redis.cluster.SlotWatch): asked on each watchdog beat whether the
        # primary left the listener's connection.
        self._primary_moved = primary_moved
        self.connected = False
        self._client = client
        self._channel = channel
        self._log = log  # None: replay_log_length=0, every gap flushes
        self._codec = codec
        self._config = config
        self._clock = clock  # lease stamps only: L1 compares them with its own readings
        self._counters = counters
        self._receiver = receiver
        self._stop = threading.Event()
        # Notified at each renewal (a Condition, not an Event per renewal: renewals come at
        # every drained socket, waiters rarely). The listener and readers both renew.
        self._renewed = threading.Condition(threading.Lock())
        self._lease_until = -math.inf
        # The listener's socket while the listener is idle with every notice it read
        # applied; None while it reads or applies, or is not connected (renew_if_drained).
        self._drained: Any = None
        self._select = _unpatched_select()
        self._thread: threading.Thread | None = None
        self._ever_connected = False
        self._said_never = False
        self._malformed = 0
        # The last logged notice applied (None: not caught up since the last flush or
        # start), and which server and namespace life it belongs to.
        self._position: Position | None = None
        self._identity: Identity | None = None
        self._suspended_at: float | None = None

    def message(self, key: Target, value: bytes | None = None) -> bytes:
        """The notice for ``key`` (a list: several keys; None: flush everything; a dict: a
        tag or a prefix, see :data:`~fleetcache.core.protocols.Target`), with our sender
        id; with ``value`` (one key's new envelope bytes, ``sync_strategy="update"``), the
        notice that carries it.

        Every notice invalidates, fills included: a value can vanish from L2 without one
        (FLUSHDB, maxmemory eviction), and then another process may still hold the old
        one in L1. The third element is always false: version 0.1 listeners read it as
        "only wake waiters", which is what a 0.1 fill meant.
        """
        if value is not None:
            return self._codec.encode_payload((self.sender_id, key, False, value))
        return self._codec.encode_payload((self.sender_id, key, False))

    def await_lease(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the listener to renew L1's lease; True if it did (or
        had, since the caller found it run out)."""
        with self._renewed:
            if self._clock.monotonic() < self._lease_until:
                return True
            return self._renewed.wait(timeout)

    def renew_if_drained(self) -> bool:
        """Renew L1's lease from a reader: True if the listener is idle with every notice
        it read applied and its socket holds nothing, as of now.

        The order makes it race-free: the socket is looked at *before* the listener's
        state is read again. The listener leaves its idle state before it reads a byte
        and enters it only once all it read is applied, so a notice that had reached the
        socket by the time stamped is either still there (seen: no renewal) or read, and
        then the listener is busy with it (seen: no renewal) or done applying it.
        """
        sock = self._drained
        if sock is None:
            return False
        now = self._clock.monotonic()
        try:
            if _has_input(sock, self._select):
                return False
        except (OSError, ValueError):  # closed under us: the listener is reconnecting
            return False
        if self._drained is not sock:
            return False
        self._renew(now + self._config.max_listener_lag)
        return True

    def _renew(self, until: float) -> None:
        with self._renewed:
            self._lease_until = until
            self._receiver.lease(until)
            self._renewed.notify_all()

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
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
        try:
            if self._config.is_cluster:  # a shard channel (fleetcache.redis.cluster)
                pubsub.ssubscribe(self._channel)
            else:
                pubsub.subscribe(self._channel)
            interval = self._config.health_check_interval
            lag = self._config.max_listener_lag
            next_ping = time.monotonic() + interval
            pending: tuple[bytes, float] | None = None  # (token, deadline)
            while not self._stop.is_set():
                now = time.monotonic()
                if pending is not None and now > pending[1]:
                    raise _BusStalledError("no PONG within health_check_timeout")
                if pending is None and now >= next_ping:
                    if (self._primary_moved is not None
                            and self._primary_moved(pubsub.connection)):
                        raise _PrimaryMovedError("the primary moved")
                    now = time.monotonic()  # the watch may have taken a round trip
                    token = os.urandom(6).hex()
                    pending = (token.encode(), now + self._config.health_check_timeout)
                    pubsub.ping(token)
                    next_ping = now + interval
                    if self.connected:
                        self._check_epoch()
                msg = pubsub.get_message(timeout=0.0)
                if msg is None:
                    wait = min(_POLL, max(0.0, (pending[1] if pending else next_ping) - now))
                    msg = self._idle(pubsub, wait, lag)
                    if msg is None:
                        continue
                kind = msg["type"]
                if kind in ("message", "smessage"):
                    self._receive(msg["data"])
                elif kind == "pong":
                    if pending is not None and msg["data"] == pending[0]:
                        pending = None
                elif kind in ("subscribe", "ssubscribe"):
                    self._mark_up()
                elif kind == "sunsubscribe":
                    # The cluster moved the slot away from this node (we never unsubscribe).
                    raise _PrimaryMovedError("the cluster moved the channel's slot")
        finally:
            pubsub.close()  # `connected` is cleared by _mark_down, which logs the transition

    def _idle(self, pubsub: Any, wait: float, lag: float) -> Any:
        """Drained (every notice that reached us is applied): renew the lease, let readers
        renew it while we sleep, and wait up to ``wait`` for input; the next message, or
        None."""
        sock = pubsub.connection._sock if pubsub.connection is not None else None
        if sock is None:  # not connected: get_message connects (or raises)
            return pubsub.get_message(timeout=wait)
        if self.connected:
            self._renew(self._clock.monotonic() + lag)
            self._drained = sock  # readers may renew from here on
        try:  # select.select at call time: gevent's, once it has patched
            ready = _has_input(sock, select.select, wait)
        finally:
            self._drained = None  # before a byte is read
        return pubsub.get_message(timeout=0.0) if ready else None

    def _receive(self, data: Any) -> None:
        """A published notice: note its log position, skip it if a replay applied it."""
        head, sep, notice = bytes(data).partition(b"|")
        if not sep:
            self._unreadable()
            return
        if head:
            try:
                position = parse_position(head)
            except ValueError:
                self._unreadable()
                return
            if self._position is not None:
                if position <= self._position:
                    return  # replayed already
                self._position = position
        self._apply(notice, version=version_of(head))

    def _apply(self, data: bytes, replayed: bool = False, version: int = 0) -> None:
        try:
            sender, key, _, *value = self._codec.decode_payload(data)
        except (CorruptValueError, TypeError, ValueError):
            self._unreadable()
            return
        if sender == self.sender_id:
            return  # our own write: already applied locally, in order
        counters = self._counters
        if value and version and isinstance(key, str) and isinstance(value[0], bytes):
            counters.invalidations_received += 1  # an update is an invalidation, kept
            self._receiver.update(key, value[0], version)
            return
        if key is None:
            counters.invalidations_received += 1
            self._flush(False)
            return
        if isinstance(key, dict):
            self._apply_group(key, replayed)
            return
        keys = [key] if isinstance(key, str) else key
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            self._unreadable()
            return
        counters.invalidations_received += len(keys)
        if replayed:
            counters.invalidations_replayed += len(keys)
        for k in keys:
            self._receiver.invalidate(k)

    def _apply_group(self, target: dict[Any, Any], replayed: bool) -> None:
        """A tag's or a prefix's notice (``{"t": tag}`` / ``{"p": prefix}``)."""
        ((kind, name),) = target.items() if len(target) == 1 else ((None, None),)
        if not isinstance(name, str) or kind not in ("t", "p"):
            self._unreadable()
            return
        self._counters.invalidations_received += 1
        if replayed:
            self._counters.invalidations_replayed += 1
        if kind == "t":
            self._receiver.invalidate_tag(name)
        else:
            self._receiver.invalidate_prefix(name)

    def _unreadable(self) -> None:
        # Another version mid-deploy, a stray publisher: it may have been an invalidation,
        # so drop everything rather than risk serving a stale value.
        self._malformed += 1
        if self._malformed & (self._malformed - 1) == 0:  # 1st, 2nd, 4th, 8th...
            logger.warning("fleetcache: unreadable message on %s (%d so far); L1 flushed",
                           self._channel, self._malformed)
        self._flush(False)

    def _flush(self, gap: bool) -> None:
        if self._ever_connected:  # the first subscription's flush is no event
            self._counters.l1_flushes += 1
        self._receiver.flush(gap)
        self._end_suspension()

    def _end_suspension(self) -> None:
        started, self._suspended_at = self._suspended_at, None
        if started is not None:
            self._counters.l1_suspended_s += time.monotonic() - started

    def _catch_up(self) -> str | None:
        """Bring L1 up to date after a (re)subscription: replay the log from our position,
        or flush. None if L1 was kept, else why it was flushed."""
        log = self._log
        if log is None:
            self._flush(True)
            return "no replay log (replay_log_length=0)"
        identity = log.identity()
        reason = None
        position = self._position
        if position is None or self._identity is None:
            reason = "first subscription"
        elif identity != self._identity:
            reason = ("another server (run id changed)" if identity.epoch ==
                      self._identity.epoch else "namespace flushed (epoch changed)")
        else:
            replayed = log.replay(position, lambda notice: self._apply(notice, replayed=True))
            if replayed is None:
                reason = "the replay log no longer covers the gap"
            else:
                self._position = replayed
        if reason is not None:
            self._restart_from(log)
            self._identity = identity  # only once flushed: a failure before retries this
            return reason
        self._counters.replays += 1
        self._receiver.resume()
        self._end_suspension()
        return None

    def _restart_from(self, log: ReplayLog) -> None:
        # The log's end first, then the flush: a notice logged after that end is applied
        # when it arrives; one logged before it was published before the flush, which
        # covers it (a read that raced it is refused promotion by the flush).
        self._position = log.tail()
        self._flush(True)

    def _check_epoch(self) -> None:
        """The watchdog's check for a flush from outside (FLUSHALL, a restart)."""
        log = self._log
        if log is None or self._identity is None:
            return
        epoch = log.epoch()
        if epoch != self._identity.epoch:
            self._restart_from(log)
            self._identity = Identity(self._identity.run_id, epoch)
            logger.warning("fleetcache: namespace flushed outside fleetcache (FLUSHALL, or a "
                           "restart without persistence); L1 flushed")

    def _mark_up(self) -> None:
        # Catch up before declaring the bus up: entries held until now may have missed
        # notices. redis-py may have resubscribed by itself, so a gap can announce itself
        # here first: hold L1 back for the catch-up too.
        if self._ever_connected:
            self._suspend()
        reason = self._catch_up()
        self._renew(self._clock.monotonic() + self._config.max_listener_lag)
        if self._ever_connected:
            self._counters.reconnects += 1
            if reason is None:
                logger.warning("fleetcache: invalidation bus reconnected; missed notices "
                               "replayed, L1 kept")
            else:
                logger.warning("fleetcache: invalidation bus reconnected; L1 flushed (%s)",
                               reason)
        self._ever_connected = True
        self.connected = True

    def _suspend(self) -> None:
        """Hold L1 back until a catch-up (flush it where there will be no replay)."""
        if self._log is not None and self._position is not None:
            if self._suspended_at is None:
                self._suspended_at = time.monotonic()
            self._receiver.suspend()
        else:
            self._flush(True)

    def _mark_down(self, exc: BaseException | None) -> None:
        was_connected = self.connected
        self.connected = False
        self._drained = None
        self._suspend()
        self._renew(math.inf)  # no lease without a listener: degraded_l1_ttl bounds L1
        reason = f"{type(exc).__name__}: {exc}" if exc else "error"
        if was_connected:
            logger.warning("fleetcache: invalidation bus down (%s); L1 suspended until the "
                           "missed notices are replayed, reconnecting", reason)
        elif not self._ever_connected and not self._said_never:
            # Once: a bus that never comes up (Redis down at start, an ACL user without
            # channel permission) would otherwise be visible in health() only.
            self._said_never = True
            logger.warning("fleetcache: invalidation bus cannot subscribe (%s); L1 entries "
                           "live degraded_l1_ttl until it does", reason)
