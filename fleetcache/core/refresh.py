"""Background refreshes: a stale value is served at once while one worker recomputes it.

``get_or_compute(key, compute, ttl=T, stale_ttl=S)`` stores values that are fresh for T and
kept S longer (L2 holds them ``T + S``). A caller that finds one past T but within S gets it
at once and calls :meth:`Refresher.start`. At most one refresh of a key runs per process (a
set in its :class:`~fleetcache.core.process.ProcessState`) and one per fleet: the refresh
takes the key's fill lock, in pottery's Redlock format like a cold compute, and only if L2
still holds the stale bytes it read (``lock_stale``), so a key deleted or rewritten
meanwhile is neither resurrected nor overwritten; its fill lease makes any write that
lands during the compute win (the refreshed value is then dropped). When it stores, the
usual notice drops every worker's stale copy.

Fail-safe: a refresh that raises keeps the fleet lock ``fail_safe_throttle`` seconds, so no
process retries a failing database before then, and callers keep getting the stale value
until the window ends. A process that finds the lock held (another worker refreshes, or its
failure holds the throttle) does not try again until that lock ends (at most
``fail_safe_throttle``): else every stale read would start a thread and a script call.
The error is counted (``refresh_errors``) and logged, the 1st, 2nd, 4th, 8th... time.

A refresh runs on a daemon thread, which is a greenlet once gevent has patched
``threading``: the caller that asked for it only appends to a queue (a per-process
dispatcher thread starts the refresh threads), and a hub is never blocked by it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import BackendError
from .flights import Fill
from .process import ProcessState
from .tiers import Tiers

if TYPE_CHECKING:
    from .singleflight import SingleFlight

logger = logging.getLogger("fleetcache")


class Refresher:
    """Starts and runs the background refreshes of one cache in one process."""

    __slots__ = ("_flight", "_tiers")

    def __init__(self, tiers: Tiers, flight: SingleFlight) -> None:
        self._tiers = tiers
        self._flight = flight

    def start(self, proc: ProcessState, key: str, fill: Fill[Any],
              blob: bytes | None = None) -> threading.Event | None:
        """Refresh ``key`` in the background unless this process already does, or its last
        refresh failed less than ``fail_safe_throttle`` ago. ``blob``: the stale bytes just
        read from L2 (None: read them again). The event set when this process's refresh of
        ``key`` ends (None if none runs)."""
        dispatcher = None
        with proc.refresh_lock:
            running = proc.refreshing.get(key)
            if running is not None or proc.throttled.get(key, 0.0) > time.monotonic():
                return running
            done = proc.refreshing[key] = threading.Event()
            if proc.refresh_dispatcher is None:  # the first refresh of this process
                dispatcher = proc.refresh_dispatcher = threading.Thread(
                    target=self._dispatch, args=(proc,), name="fleetcache-refresh-dispatch",
                    daemon=True)
        proc.refresh_queue.append(lambda: self._run(proc, key, fill, blob))
        proc.refresh_wake.set()
        if dispatcher is not None:
            dispatcher.start()
        return done

    def _dispatch(self, proc: ProcessState) -> None:
        """Start each queued refresh on its own thread, so that the caller that asked for
        it does not wait for ``Thread.start`` (which returns only once the thread runs)."""
        queue, wake = proc.refresh_queue, proc.refresh_wake
        while not proc.closed:
            wake.wait()
            wake.clear()
            while queue:
                task = queue.popleft()
                try:
                    threading.Thread(target=task, name="fleetcache-refresh",
                                     daemon=True).start()
                except RuntimeError:  # the interpreter is shutting down: no refresh
                    return

    def _run(self, proc: ProcessState, key: str, fill: Fill[Any], blob: bytes | None) -> None:
        try:
            self._refresh(proc, key, fill, blob)
        except BackendError as exc:
            self._tiers.read_failed(exc)
            self._throttle(proc, key)
        finally:
            self._done(proc, key)

    def _refresh(self, proc: ProcessState, key: str, fill: Fill[Any],
                 blob: bytes | None) -> None:
        tiers = self._tiers
        seq = tiers.l1.seq
        if blob is None:
            blob = proc.l2.get(key)
        decoded = tiers.decode(key, blob)
        if decoded is None:
            return  # gone (deleted, or past its window): nothing to refresh or resurrect
        left = tiers.fresh_left(decoded[1])
        if left > fill.ahead:  # refreshed meanwhile, or only this process's copy was old
            tiers.keep(key, decoded[0], left, seq, stale_ttl=fill.stale_ttl, ahead=fill.ahead,
                       tags=decoded[2])
            return
        assert blob is not None
        lock = proc.fill_lock(key)
        taken, held_for = proc.l2.lock_stale(key, blob, lock)
        if taken == 0:  # another worker refreshes (or its failure holds the throttle): do
            self._throttle(proc, key, held_for)  # not ask again until that lock is over
        if taken != 1:
            return
        tiers.counters.refreshes += 1
        released = False
        try:
            started = time.monotonic()
            try:
                value = self._flight.run(fill.compute)
                released, _ = self._flight.store_computed(
                    proc, lock, key, value, fill, seq=seq, started=started, refresh=True)
            except Exception as exc:  # fail-safe: the stale value stays in service
                # (the compute raised, or its value did not fit the caller's type)
                self._failed(key, exc)
                proc.l2.abandon_fill(key, lock,
                                     hold_ms=int(tiers.config.fail_safe_throttle * 1000))
                released = True
                self._throttle(proc, key)
        finally:
            if not released:
                proc.l2.abandon_fill(key, lock)

    def _failed(self, key: str, exc: Exception) -> None:
        counters = self._tiers.counters
        counters.refresh_errors += 1
        if counters.refresh_errors & (counters.refresh_errors - 1) == 0:
            logger.warning("fleetcache: refresh of %r raised %r; serving the stale value "
                           "(%d refresh errors so far)", key, exc, counters.refresh_errors)

    def _throttle(self, proc: ProcessState, key: str, seconds: float | None = None) -> None:
        """No refresh of ``key`` from this process for ``fail_safe_throttle`` seconds, or
        ``seconds`` if that is shorter."""
        limit = self._tiers.config.fail_safe_throttle
        seconds = limit if seconds is None else min(limit, seconds)
        now = time.monotonic()
        with proc.refresh_lock:
            throttled = proc.throttled
            if len(throttled) >= 1024:  # keep it bounded: forget the throttles that ended
                for other in [k for k, until in throttled.items() if until <= now]:
                    del throttled[other]
            throttled[key] = now + seconds

    @staticmethod
    def _done(proc: ProcessState, key: str) -> None:
        with proc.refresh_lock:
            done = proc.refreshing.pop(key, None)
        if done is not None:
            done.set()
