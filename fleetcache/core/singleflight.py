"""Single-flight: a cold key is computed once per fleet, whoever asks for it.

Two levels. Threads (or greenlets) of one process join one in-process flight per key
(:mod:`fleetcache.core.flights`) and share its outcome, value or exception; processes share
one fleet lock per key (:class:`~fleetcache.core.protocols.FillLock`, pottery's Redlock
format), tried without blocking inside the same script that found the value missing.
Losers wait for the *value*: woken by the winner's notice, polling L2 with backoff as a
fallback. If the winner dies, its lock expires after ``lock_timeout`` and a waiter takes
over; if it finishes without a value (its compute raised, or a write revoked its fill), the
processes that waited for it compute at once, in parallel, instead of queueing for the lock
one after another.

The winner's fill carries a lease (:mod:`fleetcache.redis.store`): a write of the key during
the compute revokes it, and the computed value then reaches its caller but is not stored,
so a delete is never undone by a compute that read the old data.

Deadlines of waits run on the real monotonic clock, not the injected one: a frozen fake
clock must not make a waiter wait forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .errors import BackendError, ValueEncodeError, ValueTooLargeError
from .flights import NO_VALUE, WAIT_SLACK, Fill, Flight
from .notfound import NOT_FOUND
from .process import ProcessState
from .protocols import FillLock, FillOutcome
from .refresh import Refresher
from .tiers import MISSING, Tiers

logger = logging.getLogger("fleetcache")

T = TypeVar("T")

_TIMED_OUT: Any = object()
_WAIT_FIRST = 0.001  # first poll of a waiter; doubles up to _WAIT_CAP
_WAIT_CAP = WAIT_SLACK / 2


class SingleFlight:
    """``get_or_compute`` past an L1 hit."""

    __slots__ = ("_refresher", "_tiers")

    def __init__(self, tiers: Tiers) -> None:
        self._tiers = tiers
        self._refresher = Refresher(tiers, self)

    def get_or_compute(self, key: str, fill: Fill[T]) -> T:
        """The value of ``key`` from L1 (filled meanwhile), L2, or one compute per fleet.

        With ``stale_ttl``, a value past its fresh time but within that window is returned
        at once and refreshed in the background (:mod:`fleetcache.core.refresh`).
        """
        tiers = self._tiers
        proc = tiers.process()
        if tiers.l1.is_negative(key):  # a cached "nothing", held apart from L1's values
            tiers.counters.l1_hits += 1
            return cast(T, NOT_FOUND)
        if fill.refreshes:
            entry = tiers.l1.stale(key)
            if entry is None and key in tiers.l1.data and tiers.await_listener():
                entry = tiers.l1.stale(key)  # the listener was only late: look again
            if entry is not None:
                # Past its L1 life by more than the refresh-ahead margin: past its fresh
                # time, as far as L1 can tell (an entry cut short by l1_ttl counts too).
                if tiers.clock.monotonic() >= entry[1] + fill.ahead:
                    tiers.counters.stale_served += 1
                return self._answer_early(proc, key, fill, entry[0])
        l1 = tiers.l1
        # raises for a compute asking for its own key
        flight, leader = proc.flights.join(key, l1.seq)
        while not leader:
            if not flight.wait():
                flight, leader = proc.flights.take_over(key, flight, l1.seq)
                if leader:
                    logger.warning("fleetcache: waited lock_timeout for this process's "
                                   "compute of %r; one more compute takes over", key)
            elif flight.error is not None:
                raise flight.error
            elif flight.value is not NO_VALUE and not l1.moved_since(key, flight.seq):
                self._tiers.counters.l1_hits += 1  # served from this process, as L1 is
                return flight.value  # type: ignore[no-any-return]
            else:
                # The leader was interrupted (a killed greenlet), or its value may predate a
                # write of the key L1 heard of during the flight (its read or compute began
                # before): that value is its own caller's, not ours. Start afresh.
                flight, leader = proc.flights.join(key, l1.seq)
        return self._lead(proc, flight, key, fill)

    def _lead(self, proc: ProcessState, flight: Flight, key: str, fill: Fill[T]) -> T:
        tiers = self._tiers
        value: Any = NO_VALUE
        error: BaseException | None = None
        try:
            entry = tiers.l1.get(key)  # filled by a flight that landed just before ours?
            value = entry[0] if entry is not None else self._fill(proc, flight, key, fill)
            return value  # type: ignore[no-any-return]
        except Exception as exc:
            error = exc
            raise
        finally:
            proc.flights.land(key, flight, value, error)

    def _fill(self, proc: ProcessState, flight: Flight, key: str, fill: Fill[T]) -> T:
        tiers = self._tiers
        stale_ttl = fill.stale_ttl
        # A holder that dies lets its lock expire after lock_timeout and a waiter takes over;
        # a chain of holders (each dying) is waited out at most this long in total.
        give_up = time.monotonic() + 3 * tiers.config.lock_timeout
        first = True  # only the first look at L2 counts as this lookup's hit or miss
        waited = False  # a holder we waited for finished without a value
        while True:
            lock = proc.fill_lock(key)
            seq = tiers.l1.seq
            try:
                blob, won = proc.l2.fetch_or_lock(key, lock)
            except BackendError as exc:  # Redis down: compute here, cache in L1 only
                tiers.read_failed(exc)
                return self._compute_unlocked(flight, key, fill)
            decoded = None if won else tiers.decode(key, blob)
            left = 0.0 if decoded is None else tiers.fresh_left(decoded[1])
            if first:
                if decoded is None or left <= -stale_ttl:
                    tiers.counters.misses += 1
                else:
                    tiers.counters.l2_hits += 1
                first = False
            if won:
                flight.progressed()
                return self._compute_locked(proc, lock, key, fill, seq=seq)
            if decoded is not None and decoded[0] is NOT_FOUND and left > 0:
                tiers.l1.put_negative(key, min(left, tiers.l1_ttl()), seq, decoded[2])
                return cast(T, NOT_FOUND)
            if decoded is not None and left > -stale_ttl:  # fresh, or stale in its window
                tiers.keep(key, decoded[0], left, seq, stale_ttl=stale_ttl, ahead=fill.ahead,
                           tags=decoded[2])
                if left > fill.ahead:
                    return decoded[0]  # type: ignore[no-any-return]
                if left <= 0:
                    tiers.counters.stale_served += 1
                return self._answer_early(proc, key, fill, decoded[0], blob)
            if blob is not None:
                try:
                    taken = self._replace(proc, key, blob, decoded is not None, lock)
                except BackendError as exc:
                    tiers.read_failed(exc)
                    return self._compute_unlocked(flight, key, fill)
                if taken == 1:
                    flight.progressed()
                    return self._compute_locked(proc, lock, key, fill, seq=seq, refresh=True)
                if taken == -1:
                    continue  # dropped, rewritten or gone meanwhile: look again
            if waited:
                # Another waiter took the lock the failed holder left: do not queue behind
                # it too; compute now, in parallel (at most once per waiting process).
                return self._compute_unlocked(flight, key, fill)
            flight.progressed()  # waiting for another process's holder is bounded too
            value = self._wait_for_value(proc, key, give_up)
            if value is _TIMED_OUT:
                logger.warning("fleetcache: the fleet lock for %r outlived lock_timeout; "
                               "computing without it", key)
                return self._compute_unlocked(flight, key, fill)
            if value is not MISSING:
                return value  # type: ignore[no-any-return]
            waited = True  # the lock is free and there is no value: try to take it once

    def _answer_early(self, proc: ProcessState, key: str, fill: Fill[T], value: Any,
                      blob: bytes | None = None) -> T:
        """Answer with ``value`` (stale, or due for refresh-ahead) and ask for a background
        refresh; with ``soft_timeout``, first wait that long for this process's refresh to
        land, and answer with its value if it did."""
        done = self._refresher.start(proc, key, fill, blob)
        if fill.soft_timeout is not None and done is not None and done.wait(fill.soft_timeout):
            entry = self._tiers.l1.get(key)
            if entry is not None:
                return entry[0]  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]

    @staticmethod
    def _replace(proc: ProcessState, key: str, blob: bytes, decodes: bool,
                 lock: FillLock) -> int:
        """L2 holds ``blob`` for ``key`` but nothing this caller may serve: 1 if ``lock`` now
        guards its replacement, 0 if another holds the lock, -1 to look again.

        A value that ``decodes`` is past the window this caller accepts (kept for another
        caller's ``stale_ttl``): it is replaced under the lock, only if still those bytes.
        Corrupt or foreign bytes would make every fill's SET NX fail, and every call
        recompute, for as long as they live: they are dropped (only them).
        """
        if decodes:
            return proc.l2.lock_stale(key, blob, lock)[0]
        proc.l2.discard(key, blob)
        return -1

    def _compute_locked(self, proc: ProcessState, lock: FillLock, key: str, fill: Fill[T], *,
                        seq: int, refresh: bool = False) -> T:
        """Holding the fleet lock and a fill lease, taken when L2 had no value (at ``seq``),
        or, for a ``refresh``, a value too stale to serve."""
        released = False
        try:
            started = time.monotonic()
            value = self.run(fill.compute)
            released, served = self.store_computed(proc, lock, key, value, fill, seq=seq,
                                                   started=started, refresh=refresh)
            return served  # type: ignore[no-any-return]
        finally:
            if not released:
                proc.l2.abandon_fill(key, lock)

    def _compute_unlocked(self, flight: Flight, key: str, fill: Fill[T]) -> T:
        """Compute without the fleet lock (Redis down, or a wait given up); keep the value in
        this process's L1 only."""
        flight.progressed()
        tiers = self._tiers
        seq = tiers.l1.seq
        value = self._readable(key, self.run(fill.compute), fill.ttl)
        if value is NOT_FOUND:
            if fill.negative_ttl is not None:
                tiers.l1.put_negative(key, min(fill.negative_ttl, tiers.l1_ttl()), seq,
                                      fill.tags)
            return cast(T, value)
        if fill.type is not None:
            tiers.convert(key, value, fill.type)  # raises before L1 keeps a misfit
        tiers.keep(key, value, fill.ttl, seq, stale_ttl=fill.stale_ttl, ahead=fill.ahead,
                   tags=fill.tags)
        return value  # type: ignore[no-any-return]

    def run(self, compute: Callable[[], T]) -> T:
        """Call ``compute``, counted (``computes``, ``in_flight``)."""
        counters = self._tiers.counters
        counters.computes += 1
        counters.in_flight += 1
        try:
            return compute()
        finally:
            counters.in_flight -= 1

    def _readable(self, key: str, value: Any, ttl: float) -> Any:
        """What every reader would decode from ``value``'s bytes (the raw value if it cannot
        be encoded: see :meth:`_uncacheable`)."""
        try:
            return self._tiers.encode(key, value, ttl)[1]
        except (ValueEncodeError, ValueTooLargeError) as exc:
            self._uncacheable(key, exc)
            return value

    def _uncacheable(self, key: str, exc: Exception) -> None:
        """A computed value msgspec cannot encode (or over ``max_value_bytes``): it is
        returned and kept in this process's L1 only, so it is computed once per process per
        ``l1_ttl``, not on every call; the fleet never sees it."""
        counters = self._tiers.counters
        counters.uncacheable_values += 1
        if counters.uncacheable_values & (counters.uncacheable_values - 1) == 0:
            logger.warning("fleetcache: the computed value of %r cannot be cached in Redis "
                           "(%s); kept in this process's L1 only (%d so far)", key, exc,
                           counters.uncacheable_values)

    def store_computed(
        self, proc: ProcessState, lock: FillLock, key: str, value: Any, fill: Fill[Any], *,
        seq: int, started: float, refresh: bool,
    ) -> tuple[bool, Any]:
        """Store under the lease, release ``lock`` and notify, in one script. L2 keeps the
        value ``ttl + stale_ttl``; it is fresh for ``ttl``.

        Returns (whether the lock was handled, the value to hand out). The value reaches
        the caller whatever happens to the store; a failure to store is logged.
        """
        tiers = self._tiers
        ttl, stale_ttl = fill.ttl, fill.stale_ttl
        if value is NOT_FOUND:
            if fill.negative_ttl is None:
                return False, value  # "nothing", not cached: the next caller asks again
            ttl, stale_ttl = tiers.jitter(fill.negative_ttl), 0.0
        tags = fill.tags
        try:
            blob, served = tiers.encode(key, value, ttl, tags)
        except (ValueEncodeError, ValueTooLargeError) as exc:
            self._uncacheable(key, exc)
            tiers.keep(key, value, ttl, seq, stale_ttl=stale_ttl, ahead=fill.ahead, tags=tags)
            return False, value
        if fill.type is not None and value is not NOT_FOUND:  # what every reader will
            tiers.convert(key, served, fill.type)  # convert: it must fit first
        try:
            outcome, version = proc.l2.store_fill(
                key, blob, int((ttl + stale_ttl) * 1000), lock, proc.bus.message(key),
                refresh=refresh, tags=tags, published=tiers.notice(key, blob))
        except BackendError as exc:
            tiers.read_failed(exc)
            return False, served
        if outcome is FillOutcome.STORED and value is NOT_FOUND:
            tiers.l1.put_negative(key, min(ttl, tiers.l1_ttl()), seq, tags)
        elif outcome is FillOutcome.STORED:
            tiers.keep(key, served, ttl, seq, stale_ttl=stale_ttl, ahead=fill.ahead,
                       written=True, tags=tags, version=version)
        elif outcome is FillOutcome.REVOKED:
            tiers.counters.fills_revoked += 1
            took = time.monotonic() - started
            logger.debug("fleetcache: computed %r not stored: %s", key,
                         f"the compute took {took:.1f} s, over fill_timeout"
                         if took >= tiers.config.fill_lease else
                         "the key was written or deleted during the compute")
        return True, served

    def _wait_for_value(self, proc: ProcessState, key: str, give_up: float) -> Any:
        """Wait for another process's compute.

        Returns the value; MISSING once the lock is free (or Redis failed); _TIMED_OUT when
        one holder kept the lock past its auto-release time (plus two polls), or at
        ``give_up``. Woken by the notice of any write of the key (the winner's fill
        included); polls value and lock together in one MGET with backoff, as a fallback
        for a lost notice.
        """
        tiers = self._tiers
        tiers.counters.lock_waits += 1
        event = proc.waiters[key] = threading.Event()
        delay = _WAIT_FIRST
        holder: bytes | None = None
        deadline = give_up
        try:
            while True:
                event.wait(min(delay, max(0.0, deadline - time.monotonic())))
                event.clear()
                delay = min(delay * 2, _WAIT_CAP)
                seq = tiers.l1.seq
                blob, current = proc.l2.get_and_check_lock(key)
                value = tiers.accept(key, blob, seq)
                if value is not MISSING or current is None:
                    return value
                now = time.monotonic()
                if current != holder:  # a new holder: its lock expires within lock_timeout
                    holder = current
                    deadline = min(give_up, now + tiers.config.lock_timeout + WAIT_SLACK)
                if now >= deadline:
                    return _TIMED_OUT
        except BackendError as exc:
            tiers.read_failed(exc)
            return MISSING
        finally:
            proc.waiters.pop(key, None)
