"""Forked helper processes for the multi-process tests.

A :class:`Child` is a process forked from the test (``multiprocessing`` "fork" context) that
owns one FleetCache and runs commands the test sends it: module-level functions of this
module, called as ``fn(cache, *args)`` in the child, whose return value (or traceback) comes
back over a Queue. Every wait has a timeout, so a hung child fails the test instead of
hanging it, and :class:`Fleet` kills whatever is still alive when the test ends.

Exit status of a child: 0 clean stop, 1 a command raised (its traceback was sent back),
2 the cache could not be built, 3 no command for ``IDLE_LIMIT`` seconds (orphaned).

Timestamps are ``time.monotonic()``: on Linux that is CLOCK_MONOTONIC, system-wide, so values
taken in different processes of one machine compare directly.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from fleetcache import FleetCache
from fleetcache.testing import connections, l1_size

CTX = mp.get_context("fork")
ABSENT = "<absent>"  # the default every get() here passes: what a missing key reads as
REPLY_TIMEOUT = 10.0
IDLE_LIMIT = 60.0

# In a child: the synchronisation objects (Barrier, Event, Queue) it inherited at fork.
# They cannot travel through a Queue, so they are handed over here instead.
SHARED: dict[str, Any] = {}

monotonic = time.monotonic


class Child:
    """One forked process driving one FleetCache, commanded through a pair of Queues."""

    def __init__(
        self, name: str, factory: Callable[[], FleetCache], shared: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self._cmd: Any = CTX.Queue()
        self._reply: Any = CTX.Queue()
        self.process = CTX.Process(
            target=_serve, args=(factory, shared or {}, self._cmd, self._reply),
            name=name, daemon=True,
        )

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.process.pid} exitcode={self.process.exitcode}>"

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def start(self, timeout: float = REPLY_TIMEOUT) -> Child:
        """Fork, and return once the child's cache is built (its factory returned)."""
        self.process.start()
        self.recv(timeout)
        return self

    def send(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(cache, *args)`` in the child; collect the answer with :meth:`recv`."""
        self._cmd.put((fn, args))

    def recv(self, timeout: float = REPLY_TIMEOUT) -> Any:
        """The answer to the oldest command sent; AssertionError on error or silence."""
        try:
            status, payload = self._reply.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self!r} sent no answer within {timeout} s "
                f"(alive={self.process.is_alive()})"
            ) from None
        if status != "ok":
            raise AssertionError(f"{self!r} failed:\n{payload}")
        return payload

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = REPLY_TIMEOUT) -> Any:
        self.send(fn, *args)
        return self.recv(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to close its cache and exit; assert it exited cleanly."""
        self._cmd.put(None)
        self.process.join(timeout)
        if self.process.is_alive():
            raise AssertionError(f"{self!r} did not exit within {timeout} s of stop")
        assert self.process.exitcode == 0, f"{self!r} exited with {self.process.exitcode}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


class Fleet:
    """Children of one test; anything still alive at the end is killed."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def spawn(
        self, name: str, factory: Callable[[], FleetCache],
        shared: dict[str, Any] | None = None,
    ) -> Child:
        child = Child(name, factory, shared)
        self.children.append(child)
        return child.start()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in self.children:
            if child.process.pid is not None:
                child.kill()


def connected(url: str, namespace: str, **options: Any) -> Callable[[], FleetCache]:
    """A factory of caches whose invalidation bus is subscribed before the child says ready."""

    def factory() -> FleetCache:
        cache = FleetCache.from_url(url, namespace=namespace, **options)
        if not cache.connect(wait=5.0):
            raise RuntimeError("invalidation bus not subscribed within 5 s")
        return cache

    return factory


def _serve(
    factory: Callable[[], FleetCache], shared: dict[str, Any], cmd: Any, reply: Any
) -> None:
    SHARED.update(shared)
    try:
        cache = factory()
    except BaseException:
        reply.put(("error", traceback.format_exc()))
        sys.exit(2)
    reply.put(("ok", os.getpid()))
    status = 0
    while True:
        try:
            item = cmd.get(timeout=IDLE_LIMIT)
        except queue.Empty:
            status = 3
            break
        if item is None:
            break
        fn, args = item
        try:
            reply.put(("ok", fn(cache, *args)))
        except BaseException:
            reply.put(("error", f"{fn.__name__}{args!r} in pid {os.getpid()}:\n"
                                f"{traceback.format_exc()}"))
            status = 1
    try:
        cache.close()
    except Exception:
        traceback.print_exc()
        status = status or 4
    sys.exit(status)


# -- commands: run in a child as fn(cache, *args), or directly in the test process ----------


def hold(cache: FleetCache, key: str, timeout: float = 2.0) -> Any:
    """Make sure ``key`` is served from this process's L1 (seen in ``l1_hits``); its value."""
    deadline = monotonic() + timeout
    while True:
        cache.get(key, ABSENT)  # promotes an L2 hit into L1
        hits = cache.stats().l1_hits
        value = cache.get(key, ABSENT)
        if cache.stats().l1_hits == hits + 1:
            return value
        if monotonic() > deadline:
            raise AssertionError(f"pid {os.getpid()}: {key!r} (= {value!r}) is not served "
                                 f"from L1 after {timeout} s")


def await_value(cache: FleetCache, key: str, expected: Any, timeout: float) -> dict[str, Any]:
    """Poll ``get`` until it returns ``expected``: when (monotonic), and what it saw before."""
    deadline = monotonic() + timeout
    seen: list[Any] = []
    while True:
        value = cache.get(key, ABSENT)
        now = monotonic()
        if value == expected:
            return {"seen_at": now, "before": seen, "pid": os.getpid(),
                    "stats": dataclasses.asdict(cache.stats())}
        if not seen or seen[-1] != value:
            seen.append(value)
        if now > deadline:
            raise AssertionError(f"pid {os.getpid()}: {key!r} still reads {value!r} after "
                                 f"{timeout} s, expected {expected!r} (seen: {seen})")
        time.sleep(0.001)


def timed_set(cache: FleetCache, key: str, value: Any) -> float:
    """``set``; the monotonic time just before it was sent."""
    start = monotonic()
    cache.set(key, value)
    return start


def timed_delete(cache: FleetCache, key: str) -> float:
    start = monotonic()
    assert cache.delete(key), f"{key!r} did not exist in L2"
    return start


def stats(cache: FleetCache) -> dict[str, int]:
    return dataclasses.asdict(cache.stats())


def await_reconnected(cache: FleetCache, timeout: float) -> dict[str, int]:
    """Poll until the listener has resubscribed after losing its connection; the stats."""
    deadline = monotonic() + timeout
    while True:
        now = cache.stats()
        if now.reconnects >= 1 and cache.health().bus_connected:
            return dataclasses.asdict(now)
        if monotonic() > deadline:
            raise AssertionError(f"pid {os.getpid()}: listener not reconnected after "
                                 f"{timeout} s: {now}")
        time.sleep(0.01)


def fork_state(cache: FleetCache, key: str) -> dict[str, Any]:
    """What a cache inherited from the parent looks like in a fresh child, first thing."""
    l1_at_start = l1_size(cache)
    stats_at_start = dataclasses.asdict(cache.stats())
    value = cache.get(key, ABSENT)
    after = cache.stats()
    bus_up = cache.connect(wait=5.0)
    return {
        "pid": os.getpid(),
        "l1_at_start": l1_at_start,
        "stats_at_start": stats_at_start,
        "value": value,
        "l1_hits": after.l1_hits,
        "l2_hits": after.l2_hits,
        "bus_up": bus_up,
        **identity(cache),
    }


def identity(cache: FleetCache) -> dict[str, Any]:
    """Which connection, pool, listener and sender id this process's cache uses."""
    conn = connections(cache)
    assert conn is not None
    return {
        "client_id": conn.client.client_id(),
        "pool_pid": conn.client.connection_pool.pid,
        "listener_alive": conn.listener_alive,
        "sender_id": conn.sender_id,
    }


def race(
    cache: FleetCache, key: str, threads: int, path: str, compute_seconds: float
) -> dict[str, Any]:
    """``threads`` threads wait on SHARED["barrier"], then all get_or_compute ``key``.

    The compute appends a line to ``path`` (one per compute, fleet-wide) and takes
    ``compute_seconds``. Returns (status, value, latency) per thread and this process's
    compute count.
    """
    def compute() -> dict[str, Any]:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {threading.get_ident()}\n")
        time.sleep(compute_seconds)  # the work being protected, not a wait
        return {"answer": 42, "computed_by": os.getpid()}

    results = burst(threads, lambda: cache.get_or_compute(key, compute), 30)
    return {"pid": os.getpid(), "results": results, "computes": cache.stats().computes}


def burst(threads: int, call: Callable[[], Any], timeout: float) -> list[tuple[str, Any, float]]:
    """``threads`` threads wait on SHARED["barrier"] (the whole fleet's), then each makes
    ``call`` once: (status, value or error, latency) per thread, all within ``timeout``."""
    barrier = SHARED["barrier"]
    results: list[tuple[str, Any, float]] = [("missing", None, math.nan)] * threads

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            start = monotonic()
            value = call()
            results[i] = ("ok", value, monotonic() - start)
        except BaseException as exc:
            results[i] = ("error", repr(exc), math.nan)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    deadline = monotonic() + timeout
    for w in workers:
        w.join(max(0.0, deadline - monotonic()))
    if any(w.is_alive() for w in workers):
        raise AssertionError(f"pid {os.getpid()}: callers still running after {timeout} s: "
                             f"{results}")
    return results


def compute_forever(cache: FleetCache, key: str, seconds: float) -> Any:
    """get_or_compute whose compute says it runs, then sleeps.

    It sets SHARED["started"] (an Event other children may wait on) and reports to
    SHARED["events"] with the monotonic time the call began: the fleet lock was taken after.
    """
    events = SHARED["events"]
    call_start = monotonic()

    def compute() -> str:
        SHARED["started"].set()
        events.put(("started", os.getpid(), call_start, monotonic()))
        time.sleep(seconds)  # stands for a compute that is running when its process dies
        return "from-killed-holder"

    return cache.get_or_compute(key, compute)


def timed_get_or_compute(
    cache: FleetCache, key: str, value: Any, after: str | None = None
) -> dict[str, Any]:
    """get_or_compute with a compute returning ``value``: timings and whether it ran here.

    With ``after``, the call starts as soon as the Event SHARED[after] is set.
    """
    computed_at: list[float] = []
    if after is not None and not SHARED[after].wait(10.0):
        raise AssertionError(f"pid {os.getpid()}: {after!r} not set within 10 s")

    def compute() -> Any:
        computed_at.append(monotonic())
        return value

    start = monotonic()
    got = cache.get_or_compute(key, compute)
    end = monotonic()
    return {"value": got, "start": start, "end": end, "computed_at": computed_at,
            "stats": dataclasses.asdict(cache.stats())}
