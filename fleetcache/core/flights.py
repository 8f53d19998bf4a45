"""The process half of single-flight: the first caller of a key leads, the others follow.

Followers do not queue behind the leader's lock to try again one by one: they wait for its
*outcome* and share it, the value or the exception (Go's ``singleflight``). Every wait is
bounded by ``lock_timeout`` past the leader's last sign of progress (joining, or starting
its compute), as a fleet lock is: then one follower takes the flight over and the others
follow it, so a slow compute costs at most one more compute per ``lock_timeout`` in a
process too. Two threads whose computes need each other's keys (A -> B and B -> A) lose at
most that long, and a compute that asks for its own key, in the same thread or greenlet,
fails at once instead of waiting for itself forever.

Registered per process (rebuilt after fork), so a flight is never shared with a child.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .config import check_seconds
from .errors import InvalidArgumentError, RecursiveComputeError

T = TypeVar("T")

#: How long past a holder's ``lock_timeout`` a waiter keeps waiting: two of its polls of L2
#: (it looks again before it concludes the holder is gone). Followers in a process give
#: their leader the same, since the leader may itself be such a waiter.
WAIT_SLACK = 0.1

#: A flight that landed without a value (its leader was interrupted).
NO_VALUE: Any = object()


def check_fill_options(stale_ttl: float | None, negative_ttl: float | None,
                       refresh_ahead: float | None, soft_timeout: float | None) -> float:
    """``InvalidArgumentError`` for a bad ``stale_ttl``, ``negative_ttl``, ``refresh_ahead``
    (a fraction of the TTL, strictly between 0 and 1) or ``soft_timeout``; the stale
    window in seconds (0: none)."""
    for name, seconds in (("stale_ttl", stale_ttl), ("negative_ttl", negative_ttl),
                          ("soft_timeout", soft_timeout)):
        if seconds is not None:
            check_seconds(name, seconds)
    if refresh_ahead is not None and (
        isinstance(refresh_ahead, bool) or not isinstance(refresh_ahead, int | float)
        or not 0 < refresh_ahead < 1
    ):
        raise InvalidArgumentError(
            f"refresh_ahead must be a fraction of the ttl between 0 and 1, got "
            f"{refresh_ahead!r}")
    return 0.0 if stale_ttl is None else float(stale_ttl)


@dataclass(frozen=True, slots=True)
class Fill(Generic[T]):
    """What a flight computes and how long the value is kept: fresh for ``ttl`` seconds,
    then stale but servable for ``stale_ttl`` more (0: not at all); ``type``, if given,
    the type every reader converts it to (checked before a computed value is stored);
    ``negative_ttl``, if given, how long a computed ``NOT_FOUND`` is cached (else it is
    not); ``refresh_ahead``, a fraction of ``ttl`` after which a read starts a background
    refresh while the value is still fresh; ``soft_timeout``, how long a caller holding a
    stale value waits for this process's refresh before taking the stale value; ``tags``,
    the tags the computed value is stored with (see ``FleetCache.invalidate_tag``)."""

    compute: Callable[[], T]
    ttl: float
    stale_ttl: float = 0.0
    type: Any = None
    negative_ttl: float | None = None
    refresh_ahead: float | None = None
    soft_timeout: float | None = None
    tags: tuple[str, ...] = ()

    @property
    def ahead(self) -> float:
        """Seconds before the fresh end at which a read asks for a refresh (0: at it)."""
        return 0.0 if self.refresh_ahead is None else (1.0 - self.refresh_ahead) * self.ttl

    @property
    def refreshes(self) -> bool:
        """Whether reads of this fill may be answered early and refreshed behind."""
        return self.stale_ttl > 0 or self.refresh_ahead is not None


class Flight:
    """One compute of one key in this process, and what came of it.

    Followers wait on ``_landed``, a lock the flight holds from birth until it lands: a
    follower acquires it (blocking until then, or until its deadline) and releases it at
    once for the next. A lock costs a fraction of an ``Event`` to make (0.07 vs 2.8 us on
    the benchmark VM: an Event is a Condition around a lock), and every L1 miss makes a
    flight, while few ever have a follower. It is ``threading``'s, looked up when the
    flight is made, so under gevent it is a greenlet-aware lock.
    """

    __slots__ = ("_landed", "_patience", "deadline", "error", "landed", "owner", "seq",
                 "value")

    def __init__(self, owner: int, patience: float, seq: int) -> None:
        self.owner = owner  # thread (or greenlet, once gevent patched) that leads
        # L1's seq when the flight began: its outcome may predate any write of the key that
        # L1 saw since (a follower then does not take it: see SingleFlight).
        self.seq = seq
        self._patience = patience
        self.deadline = time.monotonic() + patience  # followers wait until then
        self._landed = threading.Lock()
        self._landed.acquire()
        self.landed = False
        self.value: Any = NO_VALUE
        self.error: BaseException | None = None

    def progressed(self) -> None:
        """The leader starts its compute: followers owe it ``lock_timeout`` from now."""
        self.deadline = time.monotonic() + self._patience

    def land(self) -> None:
        """Wake every follower (once; the outcome is set before)."""
        self.landed = True
        self._landed.release()

    def wait(self) -> bool:
        """Wait for the outcome until the deadline (pushed on by the leader's progress);
        False if it passed first."""
        while not self.landed:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return self.landed
            if self._landed.acquire(timeout=left):
                self._landed.release()  # the next follower's turn
                return True
        return True


class Flights:
    """The flights in progress, one per key; a key leaves when its flight lands."""

    __slots__ = ("_flights", "_guard", "_patience")

    def __init__(self, patience: float) -> None:
        self._patience = patience  # lock_timeout
        self._guard = threading.Lock()  # held for a dict operation only
        self._flights: dict[str, Flight] = {}

    def join(self, key: str, seq: int) -> tuple[Flight, bool]:
        """The flight of ``key`` and whether the caller leads it (it started it, at L1's
        ``seq``).

        Raises ``RecursiveComputeError`` if the caller leads it already: its compute asked
        for its own key, and waiting would wait for itself.
        """
        me = threading.get_ident()
        with self._guard:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = Flight(me, self._patience, seq)
                return flight, True
        if flight.owner == me:
            raise RecursiveComputeError(key)
        return flight, False

    def take_over(self, key: str, stale: Flight, seq: int) -> tuple[Flight, bool]:
        """A follower gave up on ``stale``: lead a new flight in its place (at L1's ``seq``),
        unless another follower already did (then follow that one) or it landed (then join
        afresh)."""
        with self._guard:
            current = self._flights.get(key)
            if current is stale:
                current = self._flights[key] = Flight(threading.get_ident(), self._patience,
                                                      seq)
                return current, True
        return self.join(key, seq) if current is None else (current, False)

    def land(self, key: str, flight: Flight, value: Any, error: BaseException | None) -> None:
        """Publish the leader's outcome to its followers and let the next caller lead."""
        flight.value = value
        flight.error = error
        with self._guard:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.land()

    def __len__(self) -> int:
        return len(self._flights)
