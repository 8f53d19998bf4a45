"""The core behaviour every deployment must show, as a mixin (dogpile.cache's testing
mixins, for topologies): a test module of a deployment (Sentinel, Cluster) subclasses
:class:`DeploymentSuite` and gives its ``url``.

Real forked workers (:mod:`tests.integration.procs`): invalidation between them, one
compute per fleet, bulk writes, tags, prefixes, streams, ``clear``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetcache import BackendError, BackendUnavailableError, FleetCache

from . import procs
from .procs import ABSENT, Fleet, await_value, connected, hold


def write_loop(cache: FleetCache, key: str, seconds: float) -> list[tuple[float, str, float]]:
    """``set(key, i)`` every 10 ms for ``seconds``: (start, outcome, duration) of each."""
    out: list[tuple[float, str, float]] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        start = time.monotonic()
        try:
            cache.set(key, i)
            outcome = "ok"
        except BackendError as exc:
            outcome = type(exc).__name__
        out.append((start, outcome, time.monotonic() - start))
        time.sleep(0.01)
    return out


def bus_stats(cache: FleetCache) -> dict[str, Any]:
    return dataclasses.asdict(cache.stats()) | {"bus": cache.health().bus_connected}


def summary(writes: list[tuple[float, str, float]]) -> str:
    outcomes: dict[str, int] = {}
    for _, outcome, _ in writes:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return f"{outcomes}, slowest {max(t for _, _, t in writes) * 1000:.0f} ms"


def wait_for_write(cache: FleetCache, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            cache.set("probe", 1)
            return time.monotonic()
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def lose_the_primary(url: str, namespace: str, *, fail: Callable[[], None],
                     restore: Callable[[], None], label: str) -> None:
    """``fail()`` takes the primary away (a kill, a SIGSTOP) under two caches: writes fail
    within 1 s with ``BackendUnavailableError``, reads degrade to misses, the
    cache works again by itself once the deployment promoted a replica, and the other
    cache flushed its L1 (another run id). ``restore()`` brings the victim back after."""
    cache = FleetCache.from_url(url, namespace=namespace)
    other = FleetCache.from_url(url, namespace=namespace)
    try:
        assert cache.connect(wait=5.0) and other.connect(wait=5.0)
        cache.set("k", "before")
        assert hold(other, "k") == "before"
        fail()
        failed = time.monotonic()
        outcomes = write_loop(cache, "w", 0.5)  # before the deployment even sees it down
        assert all(outcome == "BackendUnavailableError" for _, outcome, _ in outcomes), outcomes
        assert max(took for _, _, took in outcomes) < 1.0, summary(outcomes)
        with pytest.raises(BackendUnavailableError):
            cache.delete("k")
        assert other.get("k", ABSENT) in (ABSENT, "before")  # reads degrade, never raise
        recovered = wait_for_write(cache, 20.0)
        print(f"\nprimary {label}: writes failed within "
              f"{max(t for _, _, t in outcomes) * 1000:.0f} ms, worked again "
              f"{recovered - failed:.2f} s after")
        cache.set("k", "after")
        assert await_value(other, "k", "after", 3.0)
        stats = procs.await_reconnected(other, 5.0)
        assert stats["l1_flushes"] >= 1, stats  # another run id: nothing held survives
    finally:
        cache.close()
        other.close()
        restore()


def clear(cache: FleetCache) -> int:
    return cache.clear()


def streams_round_trip(cache: FleetCache) -> dict[str, str]:
    first = cache.publish_to_stream("events", {"n": "0"})
    cache.publish_to_stream("events", {"n": "1"})
    (entry_id, fields), = cache.read_stream("events", first, count=10, block_ms=100)
    assert cache.read_stream_latest("events", 1)[0][0] == entry_id
    return fields


def bulk_write(cache: FleetCache, n: int) -> None:
    cache.set_many({f"bulk:{i}": i for i in range(n)}, tags=["bulk"])
    cache.set_many({f"pre:{i}": i for i in range(n)})


def hold_many(cache: FleetCache, keys: list[str]) -> dict[str, object]:
    """Read ``keys`` twice; the second read must be served from L1."""
    cache.get_many(keys)
    hits = cache.stats().l1_hits
    values = cache.get_many(keys)
    assert cache.stats().l1_hits == hits + len(keys), "not all served from L1"
    return values


def delete_group(cache: FleetCache, how: str) -> int:
    if how == "tag":
        return cache.invalidate_tag("bulk")
    if how == "prefix":
        return cache.delete_prefix("pre:")
    return cache.delete_many(["bulk:0", "pre:0"])


def await_gone(cache: FleetCache, keys: list[str], timeout: float) -> bool:
    return all(await_value(cache, k, ABSENT, timeout)["seen_at"] for k in keys)


class DeploymentSuite:
    """Subclass with a ``url`` fixture naming the deployment."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError("a deployment's suite names its url")

    def test_two_workers_share_values_and_invalidations(self, url: str,
                                                        namespace: str) -> None:
        with Fleet() as fleet:
            a = fleet.spawn("a", connected(url, namespace))
            b = fleet.spawn("b", connected(url, namespace))
            a.call(procs.timed_set, "k", "v1")
            assert b.call(hold, "k") == "v1"  # now served from b's L1
            a.call(procs.timed_set, "k", "v2")
            assert b.call(await_value, "k", "v2", 2.0)["before"] in ([], ["v1"])
            a.call(procs.timed_delete, "k")
            b.call(await_value, "k", ABSENT, 2.0)
            a.call(procs.timed_set, "k2", "x")
            assert b.call(hold, "k2") == "x"
            b.call(clear)
            a.call(await_value, "k2", ABSENT, 2.0)
            assert b.call(streams_round_trip) == {"n": "1"}
            a.stop()
            b.stop()

    def test_bulk_writes_tags_and_prefixes_reach_every_worker(self, url: str,
                                                              namespace: str) -> None:
        n = 50
        bulk = [f"bulk:{i}" for i in range(n)]
        pre = [f"pre:{i}" for i in range(n)]
        with Fleet() as fleet:
            a = fleet.spawn("a", connected(url, namespace))
            b = fleet.spawn("b", connected(url, namespace))
            a.call(bulk_write, n)
            assert b.call(hold_many, bulk + pre) == {k: i for keys in (bulk, pre)
                                                     for i, k in enumerate(keys)}
            assert a.call(delete_group, "many") == 2
            assert b.call(await_gone, ["bulk:0", "pre:0"], 2.0)
            assert a.call(delete_group, "tag") == n - 1
            assert b.call(await_gone, bulk, 2.0)
            assert a.call(delete_group, "prefix") == n - 1
            assert b.call(await_gone, pre, 2.0)
            a.stop()
            b.stop()

    def test_a_cold_key_is_computed_once_per_fleet(self, url: str, namespace: str,
                                                   tmp_path: Path) -> None:
        processes, threads = 2, 8
        log = tmp_path / "computes.log"
        barrier = procs.CTX.Barrier(processes * threads)
        with Fleet() as fleet:
            kids = [fleet.spawn(f"racer{i}", connected(url, namespace), {"barrier": barrier})
                    for i in range(processes)]
            for kid in kids:
                kid.send(procs.race, "cold", threads, str(log), 0.2)
            reports = [kid.recv(timeout=30.0) for kid in kids]
        lines = log.read_text().splitlines()
        assert len(lines) == 1, lines
        results = [res for r in reports for res in r["results"]]
        assert all(status == "ok" and value["answer"] == 42 for status, value, _ in results)
