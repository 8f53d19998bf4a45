"""``lock_masters``: the fill lock by quorum of independent masters, under faults.

Real processes racing for a cold key while the cache server loses its copy of the lock
(``DEL`` of the lock key mid-compute: what a failover to a replica that had not received
it, or a restart, does) and one of three lock masters is killed: the quorum still makes it
one compute per fleet, where the cache server's lock alone lets a late process compute a
second time. With two of three masters dead there is no quorum: computes go ahead under
the cache server's lock alone, each call within a bounded time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleetcache import FleetCache

from ..integration.procs import Fleet, connected
from ..servers import Server, binaries
from ..waiting import wait_until

pytestmark = pytest.mark.slow

COMPUTE_S = 1.0


@pytest.fixture
def masters() -> Iterator[list[Server]]:
    """Three lock masters of the test's own."""
    exe = binaries()[sorted(binaries())[0]]
    started = [Server(exe).start() for _ in range(3)]
    yield started
    for s in started:
        s.stop()


def slow_compute(cache: FleetCache, key: str, path: str) -> dict[str, Any]:
    """get_or_compute whose compute logs itself to ``path`` and takes COMPUTE_S."""
    def compute() -> str:
        with open(path, "a") as f:
            f.write(f"{time.monotonic()}\n")
        time.sleep(COMPUTE_S)  # the work the lock protects
        return "value"

    start = time.monotonic()
    value = cache.get_or_compute(key, compute)
    return {"value": value, "took": time.monotonic() - start}


@pytest.mark.parametrize("quorum", [True, False], ids=["lock_masters", "server lock only"])
def test_a_lock_lost_by_the_cache_server_still_means_one_compute(
    quorum: bool, own_server: Server, masters: list[Server], namespace: str, tmp_path: Path,
) -> None:
    options: dict[str, Any] = {"lock_masters": tuple(m.url for m in masters)} if quorum else {}
    log = tmp_path / "computes.log"
    key = "cold"
    data = redis.Redis.from_url(own_server.url)
    lock_key = FleetCache.from_url(own_server.url, namespace=namespace).keys.lock(key)
    with Fleet() as fleet:
        first = fleet.spawn("first", connected(own_server.url, namespace, **options))
        late = fleet.spawn("late", connected(own_server.url, namespace, **options))
        first.send(slow_compute, key, str(log))
        assert wait_until(log.exists, 5.0), "the first compute did not start"
        masters[0].kill()  # one of three lock masters dies mid-compute
        assert data.delete(lock_key) == 1  # the cache server forgets the lock
        late.send(slow_compute, key, str(log))
        results = [first.recv(timeout=15.0), late.recv(timeout=15.0)]
    data.close()
    computes = log.read_text().splitlines()
    print(f"\n{'quorum' if quorum else 'server lock'}: {len(computes)} computes, calls took "
          f"{[round(r['took'], 3) for r in results]} s")
    assert all(r["value"] == "value" for r in results)
    if quorum:
        assert len(computes) == 1, computes
        assert results[1]["took"] < COMPUTE_S + 1.0  # woken by the value, no lock_timeout
    else:  # what lock_masters is for
        assert len(computes) == 2, computes


def test_without_a_quorum_computes_go_ahead_in_bounded_time(
    own_server: Server, masters: list[Server], namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    masters[0].kill()
    masters[1].kill()
    cache = FleetCache.from_url(own_server.url, namespace=namespace,
                                lock_masters=tuple(m.url for m in masters))
    other = FleetCache.from_url(own_server.url, namespace=namespace,
                                lock_masters=tuple(m.url for m in masters))
    try:
        assert cache.connect(wait=5.0) and other.connect(wait=5.0)
        with caplog.at_level(logging.WARNING, logger="fleetcache"):
            took = []
            for i in range(5):
                start = time.monotonic()
                assert cache.get_or_compute(f"k{i}", lambda v=i: v) == i  # type: ignore[misc]
                took.append(time.monotonic() - start)
                assert other.get(f"k{i}") == i  # stored for the fleet as usual
        print(f"\nno quorum: get_or_compute took {[round(t * 1000, 1) for t in took]} ms")
        assert max(took) < 0.5, took
        assert cache.stats().computes == 5
        assert any("lock masters answered" in r.getMessage() for r in caplog.records)
    finally:
        cache.close()
        other.close()


def test_the_quorum_lock_is_pottery_compatible(
    own_server: Server, masters: list[Server], namespace: str,
) -> None:
    """A pottery Redlock on the same masters and name excludes fleetcache's fill."""
    from pottery import Redlock

    cache = FleetCache.from_url(own_server.url, namespace=namespace,
                                lock_masters=tuple(m.url for m in masters), lock_timeout=0.5)
    clients = [redis.Redis.from_url(m.url) for m in masters]
    try:
        held = Redlock(key=cache.keys.lock_name("k"), masters=set(clients),
                       auto_release_time=5.0)
        assert held.acquire(blocking=False)
        start = time.monotonic()
        assert cache.get_or_compute("k", lambda: "v") == "v"
        assert time.monotonic() - start >= 0.5  # waited lock_timeout for the holder
        held.release()
        assert cache.get_or_compute("k2", lambda: "v2") == "v2"
        assert not any(c.exists(cache.keys.lock("k2")) for c in clients)  # released
    finally:
        cache.close()
        for c in clients:
            c.close()
