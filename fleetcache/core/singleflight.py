"""Single-flight: a cold key is computed once per fleet, whoever asks for it.

Two levels. Threads (or greenlets) of one process share one in-process lock per key
(:mod:`fleetcache.core.keyed_locks`); processes share one fleet lock per key
(:class:`~fleetcache.core.protocols.FillLock`, pottery's Redlock format), tried without
blocking inside the same script that found the value missing. Losers wait for the *value*:
woken by the winner's fill notice, polling L2 with backoff as a fallback. If the winner
dies, its lock expires after ``lock_timeout`` and a waiter takes over.

Deadlines of waits run on the real monotonic clock, not the injected one: a frozen fake
clock must not make a waiter wait forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import BackendError
from .process import ProcessState
from .protocols import FillLock
from .tiers import MISSING, Tiers

logger = logging.getLogger("fleetcache")

T = TypeVar("T")

_TIMED_OUT: Any = object()
_WAIT_FIRST = 0.001  # first poll of a waiter; doubles up to _WAIT_CAP
_WAIT_CAP = 0.05


class SingleFlight:
    """``get_or_compute`` past an L1 hit."""

    __slots__ = ("_tiers",)

    def __init__(self, tiers: Tiers) -> None:
        self._tiers = tiers

    def get_or_compute(self, key: str, compute: Callable[[], T], ttl: float) -> T:
        """The value of ``key`` from L1 (filled meanwhile), L2, or one compute per fleet."""
        tiers = self._tiers
        proc = tiers.process()
        with proc.flights.hold(key):
            entry = tiers.l1.get(key)  # filled by the thread we waited for?
            if entry is not None:
                tiers.counters.l1_hits += 1
                return entry[0]  # type: ignore[no-any-return]
            return self._fill(proc, key, compute, ttl)

    def _fill(self, proc: ProcessState, key: str, compute: Callable[[], T], ttl: float) -> T:
        tiers = self._tiers
        # A holder that dies lets its lock expire after lock_timeout and a waiter takes over;
        # a chain of holders (each dying) is waited out at most this long in total.
        give_up = time.monotonic() + 3 * tiers.config.lock_timeout
        first = True  # only the first look at L2 counts as this lookup's hit or miss
        while True:
            lock = proc.fill_lock(key)
            seq = tiers.l1.seq
            try:
                blob, won = proc.l2.fetch_or_lock(key, lock)
            except BackendError as exc:  # Redis down: compute here, cache in L1 only
                tiers.read_failed(exc)
                return self._compute_unlocked(key, compute, ttl)
            value = MISSING if won else tiers.accept(key, blob, seq)
            if first:
                if value is MISSING:
                    tiers.counters.misses += 1
                else:
                    tiers.counters.l2_hits += 1
                first = False
            if won:
                return self._compute_locked(proc, lock, key, compute, ttl, seq=seq)
            if value is not MISSING:
                return value  # type: ignore[no-any-return]
            if blob is not None:
                # Corrupt or foreign bytes would make every SET NX fail, and every call
                # recompute, for as long as they live: drop them (only them), then compete.
                try:
                    proc.l2.discard(key, blob)
                except BackendError as exc:
                    tiers.read_failed(exc)
                    return self._compute_unlocked(key, compute, ttl)
                continue
            value = self._wait_for_value(proc, key, give_up)
            if value is _TIMED_OUT:
                logger.warning("fleetcache: the fleet lock for %r outlived lock_timeout; "
                               "computing without it", key)
                return self._compute_unlocked(key, compute, ttl)
            if value is not MISSING:
                return value  # type: ignore[no-any-return]
            # The lock is free (holder done without storing, or dead): try to take it.

    def _compute_locked(
        self, proc: ProcessState, lock: FillLock, key: str, compute: Callable[[], T],
        ttl: float, *, seq: int,
    ) -> T:
        """Holding the fleet lock, taken when L2 had no value (atomically, at ``seq``)."""
        released = False
        try:
            value = self._run(compute)
            released = self._store_computed(proc, lock, key, value, ttl, seq=seq)
            return value
        finally:
            if not released:
                lock.release()

    def _compute_unlocked(self, key: str, compute: Callable[[], T], ttl: float) -> T:
        """Degraded path: compute without the fleet lock; keep the value in L1 only."""
        tiers = self._tiers
        seq = tiers.l1.seq
        value = self._run(compute)
        tiers.l1.store_if_unchanged(key, value, min(ttl, tiers.l1_ttl()), seq)
        return value

    def _run(self, compute: Callable[[], T]) -> T:
        counters = self._tiers.counters
        counters.computes += 1
        counters.in_flight += 1
        try:
            return compute()
        finally:
            counters.in_flight -= 1

    def _store_computed(
        self, proc: ProcessState, lock: FillLock, key: str, value: Any, ttl: float, *,
        seq: int,
    ) -> bool:
        """Store (SET NX), release ``lock`` and wake waiters, in one script; True if it ran.

        A failure to store is logged; the computed value is still returned to the caller.
        """
        tiers = self._tiers
        blob = tiers.encode(key, value, ttl)
        try:
            # NX: a set() that landed during the compute is newer than what we computed.
            stored = proc.l2.store_fill(key, blob, int(ttl * 1000), lock,
                                        proc.bus.message(key, filled=True))
        except BackendError as exc:
            tiers.read_failed(exc)
            return False
        if stored:
            tiers.l1.store_if_unchanged(key, value, min(ttl, tiers.l1_ttl()), seq)
        return True

    def _wait_for_value(self, proc: ProcessState, key: str, give_up: float) -> Any:
        """Wait for another process's compute.

        Returns the value; MISSING once the lock is free (or Redis failed); _TIMED_OUT when
        one holder kept the lock past its auto-release time (plus two polls), or at
        ``give_up``. Woken by the winner's fill notice; polls value and lock together in one
        MGET with backoff, as a fallback for a lost notice.
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
                    deadline = min(give_up, now + tiers.config.lock_timeout + 2 * _WAIT_CAP)
                if now >= deadline:
                    return _TIMED_OUT
        except BackendError as exc:
            tiers.read_failed(exc)
            return MISSING
        finally:
            proc.waiters.pop(key, None)
