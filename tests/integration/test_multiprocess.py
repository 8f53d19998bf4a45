"""Multi-process behaviour: real forked processes on real Redis/Valkey servers.

Each test drives forked children (see :mod:`.procs`) through Queues with timeouts: a hung
child fails its test, and every child still alive at the end is killed.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from fleetcache import BackendError, FleetCache

from ..servers import Server
from . import procs
from .procs import ABSENT, Fleet, connected

pytestmark = pytest.mark.slow

SPREAD = 1.0  # an invalidation must reach every other process's L1 within this


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _numsub(client: redis.Redis, channel: str) -> int:
    return int(client.pubsub_numsub(channel)[0][1])


def _await_numsub(client: redis.Redis, channel: str, expected: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (n := _numsub(client, channel)) != expected:
        assert time.monotonic() < deadline, f"{channel} has {n} subscribers, expected {expected}"
        time.sleep(0.01)


def _spread(
    sent_at: float, parent: FleetCache | None, observers: list[procs.Child], key: str,
    expected: object,
) -> dict[str, float]:
    """How long after ``sent_at`` each observer (the parent, then children) read ``expected``.

    The children must already be polling (``await_value`` sent) when the write was made.
    """
    delays: dict[str, float] = {}
    if parent is not None:
        seen = procs.await_value(parent, key, expected, timeout=5.0)
        delays["parent"] = seen["seen_at"] - sent_at
    for child in observers:
        seen = child.recv(timeout=10.0)
        delays[child.name] = seen["seen_at"] - sent_at
    return delays


def test_set_and_delete_reach_every_l1(server: Server, namespace: str, cache: FleetCache) -> None:
    key = "shared-key"
    cache.set(key, "v1")
    with Fleet() as fleet:
        kids = [fleet.spawn(f"child{i}", connected(server.url, namespace)) for i in range(3)]
        for kid in kids:
            assert kid.call(procs.hold, key) == "v1"
        assert procs.hold(cache, key) == "v1"

        # child0 sets; the parent and the two other children must drop their L1 copy.
        writer, observers = kids[0], kids[1:]
        for kid in observers:
            kid.send(procs.await_value, key, "v2", 5.0)
        sent_at = writer.call(procs.timed_set, key, "v2")
        delays = _spread(sent_at, cache, observers, key, "v2")
        assert max(delays.values()) < SPREAD, f"set reached the other L1s after {delays} s"

        # Every process now holds v2 in L1; child1 deletes it.
        for kid in kids:
            assert kid.call(procs.hold, key) == "v2"
        assert procs.hold(cache, key) == "v2"
        writer, observers = kids[1], [kids[0], kids[2]]
        for kid in observers:
            kid.send(procs.await_value, key, ABSENT, 5.0)
        sent_at = writer.call(procs.timed_delete, key)
        delays = _spread(sent_at, cache, observers, key, ABSENT)
        assert max(delays.values()) < SPREAD, f"delete reached the other L1s after {delays} s"

        for kid in kids:
            received = kid.call(procs.stats)["invalidations_received"]
            assert received >= 1, f"{kid!r} received no invalidation"
            kid.stop()


def test_cold_key_is_computed_once_by_the_whole_fleet(
    server: Server, namespace: str, tmp_path: Path
) -> None:
    processes, threads, compute_s = 4, 10, 0.2
    key = "cold"
    log = tmp_path / "computes.log"
    barrier = procs.CTX.Barrier(processes * threads)
    with Fleet() as fleet:
        kids = [
            fleet.spawn(f"racer{i}", connected(server.url, namespace), {"barrier": barrier})
            for i in range(processes)
        ]
        for kid in kids:
            kid.send(procs.race, key, threads, str(log), compute_s)
        reports = [kid.recv(timeout=30.0) for kid in kids]
        for kid in kids:
            kid.stop()

    lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == 1, f"{len(lines)} computes (pid thread): {lines}"
    assert sum(r["computes"] for r in reports) == 1
    results = [res for r in reports for res in r["results"]]
    errors = [res for res in results if res[0] != "ok"]
    assert not errors, f"{len(errors)} of {len(results)} calls failed: {errors[:3]}"
    values = {repr(res[1]) for res in results}
    assert len(values) == 1, f"threads got different values: {values}"
    assert next(iter(results))[1]["answer"] == 42
    latencies = [res[2] for res in results]
    p99, p50 = _p99(latencies), sorted(latencies)[len(latencies) // 2]
    bound = compute_s + 0.3
    assert p99 < bound, (f"p99 latency {p99 * 1000:.0f} ms (p50 {p50 * 1000:.0f} ms) over "
                         f"{len(latencies)} calls exceeds compute + 300 ms = {bound * 1000:.0f} ms")


def test_fork_of_a_used_instance(server: Server, namespace: str, make_cache: object) -> None:
    """gunicorn --preload: a cache made and used in the master, then forked into workers."""
    key = "preloaded"
    parent: FleetCache = make_cache()  # type: ignore[operator]
    assert parent.connect(wait=5.0)
    parent.set(key, "before-fork")
    assert procs.hold(parent, key) == "before-fork"
    before = procs.identity(parent)
    assert before["listener_alive"]
    channel = parent.keys.channel
    admin = redis.Redis.from_url(server.url)
    try:
        _await_numsub(admin, channel, 1)
        with Fleet() as fleet:
            kids = [fleet.spawn(f"worker{i}", lambda: parent) for i in range(3)]
            # Changed after the fork: a child that kept the parent's L1 would serve the old
            # value, since it has heard no invalidation.
            parent.set(key, "after-fork")
            states = [kid.call(procs.fork_state, key) for kid in kids]
            for kid, st in zip(kids, states, strict=True):
                assert st["pid"] == kid.pid
                assert st["l1_at_start"] == 0, f"{kid!r} inherited {st['l1_at_start']} L1 entries"
                assert st["stats_at_start"]["l1_hits"] == 0, st["stats_at_start"]
                assert (st["value"], st["l1_hits"], st["l2_hits"]) == ("after-fork", 0, 1), st
                assert st["bus_up"] and st["listener_alive"], st
                assert st["pool_pid"] == kid.pid, st
                assert st["sender_id"] != before["sender_id"], "child reuses the parent's id"
            client_ids = [before["client_id"]] + [st["client_id"] for st in states]
            assert len(set(client_ids)) == 4, f"connections shared: CLIENT IDs {client_ids}"
            # Each child subscribed on its own connection, next to the parent's.
            _await_numsub(admin, channel, 4)

            # parent -> children
            for kid in kids:
                assert kid.call(procs.hold, key) == "after-fork"
                kid.send(procs.await_value, key, "from-parent", 5.0)
            sent_at = procs.timed_set(parent, key, "from-parent")
            delays = _spread(sent_at, None, kids, key, "from-parent")
            assert max(delays.values()) < SPREAD, f"parent's set reached children after {delays}"

            # child -> parent and siblings
            assert procs.hold(parent, key) == "from-parent"
            for kid in kids[1:]:
                assert kid.call(procs.hold, key) == "from-parent"
                kid.send(procs.await_value, key, "from-child", 5.0)
            sent_at = kids[0].call(procs.timed_set, key, "from-child")
            delays = _spread(sent_at, parent, kids[1:], key, "from-child")
            assert max(delays.values()) < SPREAD, f"child's set reached others after {delays}"
            for kid in kids:
                kid.stop()

        _check_parent_after_children(parent, admin, channel, before, key)
    finally:
        admin.close()


def _check_parent_after_children(
    parent: FleetCache, admin: redis.Redis, channel: str, before: dict[str, object], key: str
) -> None:
    """The children are gone; the parent's own sockets and listener were never shared."""
    _await_numsub(admin, channel, 1)
    after = procs.identity(parent)
    assert after["listener_alive"] and after["pool_pid"] == os.getpid()
    assert after["client_id"] == before["client_id"], "parent's connection was replaced"
    health = parent.health()
    assert health.ok, health
    assert parent.stats().reconnects == 0, "parent's listener lost its connection"
    assert procs.hold(parent, key) == "from-child"
    with Fleet() as fleet:
        late = fleet.spawn("late-worker", lambda: parent)
        sent_at = late.call(procs.timed_set, key, "from-late-child")
        delays = _spread(sent_at, parent, [], key, "from-late-child")
        assert delays["parent"] < SPREAD, f"late child's set reached parent after {delays}"
        late.stop()


@pytest.mark.parametrize("arrival", ["waiting", "after_kill"])
def test_killed_lock_holder_releases_after_lock_timeout(
    server: Server, namespace: str, arrival: str
) -> None:
    """A holder SIGKILLed mid-compute: its lock expires and the waiter takes over.

    The waiter asks either the moment the holder's compute starts (``waiting``: a worker
    already waiting when its peer dies) or right after the kill (``after_kill``).
    """
    lock_timeout = 1.0
    key = "guarded"
    factory = connected(server.url, namespace, lock_timeout=lock_timeout)
    events, started = procs.CTX.Queue(), procs.CTX.Event()
    with Fleet() as fleet:
        holder = fleet.spawn("holder", factory, {"events": events, "started": started})
        waiter = fleet.spawn("waiter", factory, {"started": started})
        if arrival == "waiting":
            waiter.send(procs.timed_get_or_compute, key, "from-waiter", "started")
        holder.send(procs.compute_forever, key, 30.0)
        kind, pid, call_start, _ = events.get(timeout=10.0)
        assert (kind, pid) == ("started", holder.pid)
        os.kill(holder.pid, signal.SIGKILL)
        holder.process.join(5)
        assert holder.process.exitcode == -signal.SIGKILL
        if arrival == "after_kill":
            waiter.send(procs.timed_get_or_compute, key, "from-waiter")

        got = waiter.recv(timeout=lock_timeout + 5.0)
        took = got["end"] - got["start"]
        assert took < lock_timeout + 1.0, f"waiter took {took:.2f} s (holder dead)"
        assert got["value"] == "from-waiter"
        assert len(got["computed_at"]) == 1, got
        # The dead holder's lock was taken after call_start and lives lock_timeout: nobody
        # may compute before it expired.
        early = call_start + lock_timeout - got["computed_at"][0]
        assert early < 0.05, f"waiter computed {early:.3f} s before the dead lock expired"
        waiter.stop()

        # Exactly one compute, and it was stored in L2 (a waiter that takes over holds the
        # lock): a fresh process reads it and computes nothing.
        reader = fleet.spawn("reader", factory)
        again = reader.call(procs.timed_get_or_compute, key, "from-reader")
        assert again["value"] == "from-waiter", (
            f"the waiter's value was not stored in L2 (a fresh reader computed "
            f"{again['value']!r}): it computed without the fleet lock; waiter stats: "
            f"{got['stats']}"
        )
        assert again["computed_at"] == [] and again["stats"]["l2_hits"] == 1, again
        reader.stop()


def test_listeners_recover_from_a_server_restart(own_server: Server, namespace: str) -> None:
    key = "survivor"
    parent = FleetCache.from_url(own_server.url, namespace=namespace)
    try:
        assert parent.connect(wait=5.0)
        parent.set(key, "old")
        with Fleet() as fleet:
            kids = [fleet.spawn(f"child{i}", connected(own_server.url, namespace))
                    for i in range(2)]
            for kid in kids:
                assert kid.call(procs.hold, key) == "old"
                kid.send(procs.await_value, key, "new", 8.0)

            own_server.restart()
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    sent_at = procs.timed_set(parent, key, "new")
                    break
                except BackendError:
                    assert time.monotonic() < deadline, "Redis did not answer after restart"
                    time.sleep(0.01)

            delays = _spread(sent_at, parent, kids, key, "new")
            assert max(delays.values()) < 3.0, f"new value reached L1s after {delays} s"

            # The listeners are back, not just L1 flushed: an entry held at full L1 TTL
            # after the reconnect is invalidated over the new subscription.
            for kid in kids:
                kid.call(procs.await_reconnected, 5.0)
                assert kid.call(procs.hold, key) == "new"
                kid.send(procs.await_value, key, "newer", 5.0)
            sent_at = procs.timed_set(parent, key, "newer")
            delays = _spread(sent_at, None, kids, key, "newer")
            assert max(delays.values()) < SPREAD, f"post-restart set reached L1s after {delays}"
            for kid in kids:
                kid.stop()
    finally:
        parent.close()
