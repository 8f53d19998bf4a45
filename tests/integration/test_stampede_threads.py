"""Single-flight under threads: one compute per cold key, in one process and across two.

Two FleetCache instances stand in for two processes: each has its own in-process locks,
its own L1 and its own listener, so only the Redlock and the L2 value connect them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from fleetcache import FleetCache
from fleetcache.core import flights

from ..helpers import namespace_data_keys
from ..servers import Server
from ..waiting import wait_until

MakeCache = Callable[..., FleetCache]
COMPUTE = 0.2


@pytest.fixture
def raw(server: Server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


@dataclass
class Recorder:
    """Counts computes under a lock and remembers when each one ended."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0
    ended: list[float] = field(default_factory=list)

    def enter(self) -> int:
        with self.lock:
            self.calls += 1
            return self.calls

    def leave(self) -> None:
        with self.lock:
            self.ended.append(time.monotonic())


@dataclass
class Outcome:
    thread: int
    cache: int
    value: Any = None
    error: BaseException | None = None
    ended: float = 0.0


def run_threads(
    caches: list[FleetCache], per_cache: int, key: str, compute: Callable[[], Any],
    join_timeout: float = 5.0,
) -> tuple[list[Outcome], float]:
    """Start ``per_cache`` threads per cache behind one barrier; outcomes and start time."""
    total = len(caches) * per_cache
    barrier = threading.Barrier(total)
    outcomes = [Outcome(i, i % len(caches)) for i in range(total)]

    def worker(out: Outcome) -> None:
        cache = caches[out.cache]
        barrier.wait()
        try:
            out.value = cache.get_or_compute(key, compute, ttl=60)
        except BaseException as exc:
            out.error = exc
        out.ended = time.monotonic()

    threads = [threading.Thread(target=worker, args=(o,), daemon=True) for o in outcomes]
    for t in threads:
        t.start()
    start = time.monotonic()
    deadline = start + join_timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    assert hung == 0, f"{hung} threads still waiting after {join_timeout} s"
    return outcomes, start


def failing(rec: Recorder, seconds: float) -> Callable[[], str]:
    """A compute that records its call, works ``seconds``, then raises."""
    def compute() -> str:
        rec.enter()
        time.sleep(seconds)
        raise RuntimeError("db down")
    return compute


def connected(make_cache: MakeCache, n: int) -> list[FleetCache]:
    caches = [make_cache() for _ in range(n)]
    for c in caches:
        assert c.connect(wait=5.0)
        assert c.health().ok  # warm the pool: time the stampede, not the first connect
    return caches


def test_twenty_threads_one_process_compute_once(make_cache: MakeCache) -> None:
    (cache,) = connected(make_cache, 1)
    rec = Recorder()

    def compute() -> dict[str, int]:
        rec.enter()
        time.sleep(COMPUTE)
        rec.leave()
        return {"answer": 42}

    outcomes, _ = run_threads([cache], 20, "hot", compute)
    assert rec.calls == 1
    assert [o.error for o in outcomes] == [None] * 20
    assert all(o.value == {"answer": 42} for o in outcomes)
    late = max(o.ended for o in outcomes) - rec.ended[0]
    # In-process waiters queue on one lock and then hit L1: no Redis wait at all.
    assert late < 0.25, f"the last thread finished {late * 1000:.0f} ms after the compute"
    s = cache.stats()
    assert s.computes == 1 and s.in_flight == 0


@pytest.mark.parametrize("duration", [COMPUTE, 0.35])  # 0.35: far from any doubling poll
def test_two_processes_ten_threads_each_compute_once(
    make_cache: MakeCache, duration: float
) -> None:
    caches = connected(make_cache, 2)
    per_cache = 10
    rec = Recorder()

    def compute() -> str:
        rec.enter()
        time.sleep(duration)
        rec.leave()
        return "value"

    outcomes, _ = run_threads(caches, per_cache, "hot", compute)
    assert rec.calls == 1, f"{rec.calls} computes for one cold key"
    assert [o.error for o in outcomes] == [None] * (2 * per_cache)
    assert all(o.value == "value" for o in outcomes)
    late = max(o.ended for o in outcomes) - rec.ended[0]
    assert late < 0.1, f"the last waiter finished {late * 1000:.0f} ms after the compute"
    stats = [c.stats() for c in caches]
    assert sum(s.computes for s in stats) == 1
    assert sum(s.lock_waits for s in stats) >= 1  # the other "process" waited, not computed
    assert all(c.get("hot") == "value" for c in caches)


def lock_key(cache: FleetCache, key: str) -> str:
    return f"redlock:{cache.config.namespace}:lock:{key}"


def data_key(cache: FleetCache, key: str) -> str:
    return f"{cache.config.namespace}:v:{key}"


def test_failing_compute_reaches_the_caller_and_leaves_nothing_behind(
    make_cache: MakeCache, raw: redis.Redis
) -> None:
    (cache,) = connected(make_cache, 1)
    seen_lock: list[int] = []

    def boom() -> str:
        seen_lock.append(raw.exists(lock_key(cache, "k")))
        raise ValueError("compute failed: db down")

    with pytest.raises(ValueError, match="db down"):
        cache.get_or_compute("k", boom)
    assert seen_lock == [1], "the fleet lock was not held (or named differently) in compute"
    assert raw.exists(data_key(cache, "k")) == 0, "something was cached after a failure"
    assert raw.exists(lock_key(cache, "k")) == 0, "the Redlock outlived the failed compute"
    assert namespace_data_keys(raw, cache.config.namespace) == []
    assert cache.get("k", "miss") == "miss"
    assert cache.stats().in_flight == 0

    assert cache.get_or_compute("k", lambda: "recovered") == "recovered"  # next caller computes
    assert raw.exists(data_key(cache, "k")) == 1
    assert raw.exists(lock_key(cache, "k")) == 0


def test_failing_compute_does_not_hang_concurrent_waiters(
    make_cache: MakeCache, raw: redis.Redis
) -> None:
    """The first compute fails after 100 ms: the threads of its process that waited for it
    get that failure; the other process, which waited on the fleet lock, computes again
    (once) and all its threads get that value."""
    caches = connected(make_cache, 2)
    rec = Recorder()

    def flaky() -> str:
        n = rec.enter()
        if n == 1:
            time.sleep(0.1)
            raise ValueError("first compute fails")
        time.sleep(0.05)
        return f"ok-{n}"

    outcomes, start = run_threads(caches, 10, "k", flaky, join_timeout=3.0)
    # lock_timeout is 10 s: a waiter stuck on the dead compute's lock would take that long.
    assert max(o.ended for o in outcomes) - start < 1.0
    errors = [o for o in outcomes if o.error is not None]
    failed = {o.cache for o in errors}
    assert len(failed) == 1 and len(errors) == 10, errors  # every thread of that process
    assert all(str(o.error) == "first compute fails" for o in errors)
    assert rec.calls == 2  # the failure, then exactly one successful compute
    assert {o.value for o in outcomes if o.error is None} == {"ok-2"}
    assert raw.exists(lock_key(caches[0], "k")) == 0
    assert all(c.get("k") == "ok-2" for c in caches)


def test_threads_waiting_on_a_failing_compute_share_its_failure_at_once(
    make_cache: MakeCache,
) -> None:
    """6 threads, a compute that fails after 0.5 s: one compute, and every caller has the
    error at 0.5 s (on 1c91863 they queued: errors at 0.5, 1.0, ... 3.0 s)."""
    (cache,) = connected(make_cache, 1)
    rec = Recorder()
    outcomes, start = run_threads([cache], 6, "k", failing(rec, 0.5), join_timeout=5.0)
    assert rec.calls == 1
    assert all(isinstance(o.error, RuntimeError) for o in outcomes)
    assert max(o.ended for o in outcomes) - start < 0.5 + 0.4


def test_processes_waiting_on_a_failing_compute_retry_in_parallel(
    make_cache: MakeCache,
) -> None:
    """4 caches (one per "process") x 10 threads, a compute failing after 0.2 s: at most one
    compute per process, and the waiters' retries run side by side, not one per process in
    turn (on 1c91863: 40 computes in 8.4 s)."""
    caches = connected(make_cache, 4)
    rec = Recorder()
    outcomes, start = run_threads(caches, 10, "k", failing(rec, 0.2), join_timeout=10.0)
    assert all(isinstance(o.error, RuntimeError) for o in outcomes)
    assert rec.calls <= 4
    assert max(o.ended for o in outcomes) - start < 2 * 0.2 + 0.5


def test_compute_that_always_fails_never_caches_or_hangs(
    make_cache: MakeCache, raw: redis.Redis
) -> None:
    caches = connected(make_cache, 2)
    rec = Recorder()
    outcomes, start = run_threads(caches, 5, "k", failing(rec, 0.02), join_timeout=3.0)
    assert max(o.ended for o in outcomes) - start < 2.0
    assert all(isinstance(o.error, RuntimeError) for o in outcomes)
    assert rec.calls == 2  # one per process: a thread shares its process's failure
    assert raw.exists(data_key(caches[0], "k")) == 0
    assert raw.exists(lock_key(caches[0], "k")) == 0
    assert all(c.stats().in_flight == 0 for c in caches)


def test_a_follower_never_takes_a_value_older_than_a_write_it_came_after(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single-flight must not undo an invalidation: a caller that joins a flight after a
    write of its key (the leader read the old data before it) does not share the leader's
    value; the leader's own caller still gets it (its read began before the write)."""
    writer, reader = connected(make_cache, 2)
    writer.set("k", "old", ttl=60)
    leading, release, following = threading.Event(), threading.Event(), threading.Event()
    wait = flights.Flight.wait

    def joined(self: flights.Flight) -> bool:
        following.set()  # the follower is about to wait on the leader's flight
        return wait(self)

    monkeypatch.setattr(flights.Flight, "wait", joined)

    def slow_old() -> str:  # what the leader computes: the data before the write
        leading.set()
        assert release.wait(5)
        return "old"

    writer.delete("k")  # L2 empty: the leader computes
    results: dict[str, Any] = {}
    lead = threading.Thread(target=lambda: results.update(
        leader=reader.get_or_compute("k", slow_old, ttl=60)))
    lead.start()
    assert leading.wait(5)
    writer.set("k", "new", ttl=60)  # the write, during the leader's compute
    assert wait_until(lambda: reader.stats().invalidations_received >= 2)  # delete + set heard
    follow = threading.Thread(target=lambda: results.update(
        follower=reader.get_or_compute("k", lambda: "recomputed", ttl=60)))
    follow.start()
    assert following.wait(5)
    release.set()
    lead.join(5)
    follow.join(5)
    assert results["leader"] == "old"  # its caller's read began before the write
    assert results["follower"] == "new"  # from L2, not the leader's older value
    assert reader.get("k") == "new"  # and the old value was never kept
