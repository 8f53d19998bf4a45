"""A compute that outlives the fleet lock (README, "Stampedes").

Promised: "A compute that runs longer than ``lock_timeout`` is not extended: another worker
may then start computing too (at most one more per ``lock_timeout``), and a waiter that
waited ``lock_timeout`` computes for itself" -- in one process too: the threads waiting
for their process's compute give it ``lock_timeout`` from its start, then one of them takes
over and the others follow it. So a waiter never hangs for the whole slow compute, the
extra computes are bounded, and the slow holder's late release of its expired lock is its
own business: it must not raise into the caller that computed the value.

Two caches on one server stand for two worker processes (each has its own in-process locks,
its own listener and its own Redlock token), with ``lock_timeout=1.0``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fleetcache import FleetCache

from ..servers import Server

pytestmark = pytest.mark.slow

monotonic = time.monotonic

LOCK = 1.0  # lock_timeout of both caches
A_COMPUTE = 2.5  # longer than LOCK: A's lock expires while A computes
SLACK = 0.75  # scheduling slack on a shared 2-core machine
EARLY = 0.25  # A's compute starts this much after its lock was taken, at most


class Computes:
    """Records every compute, fleet-wide: (who, started, ended)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float, float | None]] = []
        self.a_started = threading.Event()
        self._lock = threading.Lock()

    def make(self, who: str, seconds: float, value: Any) -> Callable[[], Any]:
        def compute() -> Any:
            start = monotonic()
            with self._lock:
                index = len(self.log)
                self.log.append((who, start, None))
            if who == "A":
                self.a_started.set()
            time.sleep(seconds)  # the slow work itself, not a wait for anything
            with self._lock:
                self.log[index] = (who, start, monotonic())
            return value

        return compute

    def summary(self, t0: float) -> str:
        return ", ".join(f"{who} {start - t0:.3f}-{'?' if end is None else f'{end - t0:.3f}'} s"
                         for who, start, end in self.log)


def call(cache: FleetCache, key: str, compute: Callable[[], Any]) -> dict[str, Any]:
    """get_or_compute, never raising: what it returned or raised, and when."""
    start = monotonic()
    try:
        value: Any = cache.get_or_compute(key, compute)
        error = None
    except Exception as exc:
        value, error = None, exc
    return {"value": value, "error": error, "start": start, "end": monotonic()}


def in_thread(fn: Callable[[], dict[str, Any]]) -> tuple[threading.Thread, list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def two_caches(caches: Callable[..., FleetCache], url: str) -> tuple[FleetCache, FleetCache]:
    a, b = caches(url, lock_timeout=LOCK), caches(url, lock_timeout=LOCK)
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    return a, b


def release_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "fleetcache" and "could not release" in r.getMessage()]


def test_waiter_is_not_held_past_lock_timeout(
    own_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fleetcache")
    a, b = two_caches(caches, own_server.url)
    computes = Computes()
    t0 = monotonic()
    holder, a_out = in_thread(lambda: call(a, "K", computes.make("A", A_COMPUTE, "from A")))
    assert computes.a_started.wait(5), "A never started computing"
    b_res = call(b, "K", computes.make("B", 0.0, "from B"))
    holder.join(A_COMPUTE + 10)
    assert not holder.is_alive(), "A's get_or_compute never returned"
    a_res = a_out[0]
    a_start = computes.log[0][1]
    summary = (f"computes: {computes.summary(t0)}; B returned {b_res['end'] - t0:.3f} s "
               f"({b_res['end'] - b_res['start']:.3f} s after its call), A returned "
               f"{a_res['end'] - t0:.3f} s; stats A {a.stats()}, B {b.stats()}")
    print(f"\none waiter: {summary}")

    # The late release of A's expired lock did not reach A's caller.
    assert a_res["error"] is None, (
        f"A's get_or_compute raised {a_res['error']!r} after its compute outlived "
        f"lock_timeout: {summary}")
    assert a_res["value"] == "from A"
    assert release_warnings(caplog), f"A's lock release was not even attempted late: {summary}"
    # B waited for A's lock (no compute at once), but not for A's whole compute.
    assert b_res["error"] is None and b_res["value"] == "from B", summary
    assert [who for who, _, _ in computes.log] == ["A", "B"], summary
    b_start = computes.log[1][1]
    assert b_start - a_start >= LOCK - EARLY, f"B computed before A's lock expired: {summary}"
    assert b_res["end"] - b_res["start"] <= LOCK + SLACK, (
        f"B waited {b_res['end'] - b_res['start']:.3f} s, lock_timeout {LOCK} s: {summary}")
    assert b_res["end"] < a_res["end"], f"B waited for A's compute: {summary}"
    assert a.stats().computes + b.stats().computes == 2, summary
    assert b.stats().lock_waits == 1, summary
    # One value for the fleet afterwards: B's (SET NX kept it; A did not cache its own).
    assert a.get("K") == b.get("K") == "from B", summary


def test_threads_of_a_waiting_process_start_at_most_one_compute_per_lock_timeout(
    own_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture
) -> None:
    """5 threads of B wait for A's slow compute; B's own compute is slow too, so B's lock
    also expires (at 2 * LOCK) while A and B are both still computing. B's threads start
    one compute when A's lock expires and one more when B's own does, never more; none
    waits past its process's compute by more than lock_timeout."""
    caplog.set_level(logging.WARNING, logger="fleetcache")
    a, b = two_caches(caches, own_server.url)
    computes = Computes()
    threads = 5
    b_compute = A_COMPUTE
    t0 = monotonic()
    holder, a_out = in_thread(lambda: call(a, "K", computes.make("A", A_COMPUTE, "from A")))
    assert computes.a_started.wait(5), "A never started computing"
    b_threads = [in_thread(lambda: call(b, "K", computes.make("B", b_compute, "from B")))
                 for _ in range(threads)]
    holder.join(A_COMPUTE + 10)
    for thread, _ in b_threads:
        thread.join(LOCK + b_compute + 10)
    assert not holder.is_alive() and not any(t.is_alive() for t, _ in b_threads), (
        f"get_or_compute never returned: computes {computes.summary(t0)}")
    a_res = a_out[0]
    b_res = [out[0] for _, out in b_threads]
    a_start = computes.log[0][1]
    summary = (f"computes: {computes.summary(t0)}; B threads returned "
               f"{sorted(round(r['end'] - t0, 3) for r in b_res)} s, A {a_res['end'] - t0:.3f}"
               f" s; B values {[r['value'] for r in b_res]}; stats A {a.stats()}, "
               f"B {b.stats()}")
    print(f"\n{threads} waiters in one process: {summary}")

    errors = [r["error"] for r in [a_res, *b_res] if r["error"] is not None]
    assert not errors, f"get_or_compute raised {errors}: {summary}"
    whos = [who for who, _, _ in computes.log]
    assert whos[0] == "A" and set(whos[1:]) == {"B"} and 2 <= len(whos) <= 3, summary
    b_starts = [start for who, start, _ in computes.log if who == "B"]
    assert LOCK - EARLY <= b_starts[0] - a_start <= LOCK + SLACK, (
        f"B's first compute started {b_starts[0] - a_start:.3f} s after A's; lock_timeout "
        f"{LOCK} s: {summary}")
    for earlier, later in itertools.pairwise(b_starts):
        assert later - earlier >= LOCK - EARLY, f"two B computes within lock_timeout: {summary}"
    for res in b_res:
        took = res["end"] - res["start"]
        assert took <= 2 * LOCK + b_compute + SLACK, f"a B thread took {took:.3f} s: {summary}"
        assert res["value"] in ("from A", "from B"), summary
    assert a.get("K") == b.get("K") == "from A", summary  # A stored first (SET NX)
    assert len(release_warnings(caplog)) >= 2, summary  # A's and B's expired locks


def test_redis_lost_while_computing_does_not_raise(
    own_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture
) -> None:
    """The same release path, deterministically: Redis dies (SIGKILL) while the lock holder
    computes. README: reads never raise for Redis trouble; the computed value is returned
    (not cached in L2, which is gone), and the failed release is logged."""
    caplog.set_level(logging.WARNING, logger="fleetcache")
    a = caches(own_server.url, lock_timeout=LOCK)
    assert a.connect(wait=5.0)

    def compute() -> str:
        own_server.kill()  # the fleet lock was taken; now nobody can release it
        return "computed"

    result = call(a, "K", compute)
    print(f"\nRedis lost mid-compute: {result}, stats {a.stats()}")
    assert result["error"] is None, (
        f"get_or_compute raised {result['error']!r} because Redis died during the compute")
    assert result["value"] == "computed"
    assert result["end"] - result["start"] < 2.0, result
    assert release_warnings(caplog), "the failed release was not logged"
