"""fleetcache on a Sentinel deployment: the same behaviour as on one server, then failovers.

Real processes (forked workers, :mod:`tests.integration.procs`) on
``redis+sentinel://...``: invalidation between them, one compute per fleet, streams,
``clear``. Then the primary moves (``SENTINEL FAILOVER``, and a killed primary): every
worker notices and flushes (the new primary has another run id), writes fail fast with a
``BackendError`` or succeed while it happens and succeed after it, and no read is served
stale past the documented bound once the new primary took a write.

The module shares one deployment; the failover tests come last.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from fleetcache import BackendError, BackendUnavailableError, ConfigError, FleetCache
from fleetcache.core.config import parse_sentinel_url

from ..integration import procs
from ..integration.procs import ABSENT, Fleet, await_value, connected, hold
from .topology import Topology

pytestmark = pytest.mark.slow

SLACK = 0.5  # scheduling slack on top of a documented bound (2 shared cores)


# -- commands run in the workers ------------------------------------------------------------


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


def primary_port(cache: FleetCache) -> int:
    """The port of the server this worker's cache writes to now."""
    pool: Any = cache._tiers.process().client.connection_pool
    return int(pool.get_master_address()[1])


# -- URLs -----------------------------------------------------------------------------------


def test_sentinel_urls_parse_and_never_show_the_password() -> None:
    url = "redis+sentinel://app:s3cr%40t@10.0.0.1:26379,[::1]:26380,sentinel-c/cache/2"
    target = parse_sentinel_url(url)
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("sentinel-c", 26379))
    assert (target.service, target.db, target.username, target.password) == (
        "cache", 2, "app", "s3cr@t")
    assert "s3cr" not in repr(target)
    cache = FleetCache.from_url(url)
    assert "s3cr" not in repr(cache) and "s3cr" not in repr(cache.config)
    assert parse_sentinel_url("rediss+sentinel://h:1/svc").ssl
    for bad in ("redis+sentinel://u:s3cr/et@h:1/svc", "redis+sentinel://u:s3cret@h:1",
                "redis+sentinel://u:s3cret@h:x/svc", "redis+sentinel://u:s3cret@h:1/svc/db",
                "redis+sentinel://u:s3cret@h:1,/svc", "redis+sentinel://u:s3c#ret@h:1/svc"):
        with pytest.raises(ConfigError) as err:
            FleetCache.from_url(bad)
        assert "s3c" not in str(err.value), (bad, str(err.value))


# -- the core behaviour ---------------------------------------------------------------------


def test_two_workers_share_values_and_invalidations(sentinels: Topology, namespace: str) -> None:
    url = sentinels.url()
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


def clear(cache: FleetCache) -> int:
    return cache.clear()


def streams_round_trip(cache: FleetCache) -> dict[str, str]:
    first = cache.publish_to_stream("events", {"n": "0"})
    cache.publish_to_stream("events", {"n": "1"})
    (entry_id, fields), = cache.read_stream("events", first, count=10, block_ms=100)
    assert cache.read_stream_latest("events", 1)[0][0] == entry_id
    return fields


def test_a_cold_key_is_computed_once_per_fleet(
    sentinels: Topology, namespace: str, tmp_path: Path,
) -> None:
    processes, threads = 2, 8
    log = tmp_path / "computes.log"
    barrier = procs.CTX.Barrier(processes * threads)
    with Fleet() as fleet:
        kids = [fleet.spawn(f"racer{i}", connected(sentinels.url(), namespace),
                            {"barrier": barrier}) for i in range(processes)]
        for kid in kids:
            kid.send(procs.race, "cold", threads, str(log), 0.2)
        reports = [kid.recv(timeout=30.0) for kid in kids]
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    results = [res for r in reports for res in r["results"]]
    assert all(status == "ok" and value["answer"] == 42 for status, value, _ in results)


# -- failovers (last: they move the primary) ------------------------------------------------


def test_sentinel_failover_every_worker_follows_and_flushes(
    sentinels: Topology, namespace: str,
) -> None:
    url = sentinels.url()
    with Fleet() as fleet:
        reader = fleet.spawn("reader", connected(url, namespace))
        writer = fleet.spawn("writer", connected(url, namespace))
        writer.call(procs.timed_set, "k", "before")
        assert reader.call(hold, "k") == "before"
        old_port = reader.call(primary_port)
        writer.send(write_loop, "w", 4.0)  # writes all through the switch
        old, new = sentinels.failover()
        switched = time.monotonic()
        assert old == old_port and new != old
        cfg = FleetCache.from_url(url).config
        bound = cfg.health_check_interval + cfg.health_check_timeout
        # A worker that starts now writes to the new primary at once; the reader, still
        # subscribed on the old one, must notice the move within the bound.
        fresh = FleetCache.from_url(url, namespace=namespace)
        try:
            written = procs.timed_set(fresh, "k", "after")
            seen = reader.call(await_value, "k", "after", bound + 5.0, timeout=bound + 8.0)
        finally:
            fresh.close()
        late = seen["seen_at"] - written
        writes = writer.recv(timeout=15.0)
        stats = reader.call(bus_stats)
        assert reader.call(primary_port) == new
        # After the switch, writes of the old workers reach the new primary's subscribers.
        writer.call(procs.timed_set, "k", "again")
        reader.call(await_value, "k", "again", 2.0)
        reader.stop()
        writer.stop()
    print(f"\nfailover: sentinels agreed {switched:.2f}; reader served the old value "
          f"{late:.3f} s after the new primary took the write (bound {bound} s); "
          f"writes {summary(writes)}; reader {stats['l1_flushes']} flushes, "
          f"{stats['reconnects']} reconnects")
    assert late <= bound + SLACK, f"stale for {late:.3f} s after the failover"
    assert stats["l1_flushes"] >= 1 and stats["reconnects"] >= 1, stats
    assert stats["bus"]
    assert all(outcome == "ok" or outcome.endswith("Error") for _, outcome, _ in writes)
    assert max(took for _, _, took in writes) < 1.0, summary(writes)
    after = [outcome for start, outcome, _ in writes if start > switched + bound + SLACK]
    assert after and all(outcome == "ok" for outcome in after), summary(writes)


def summary(writes: list[tuple[float, str, float]]) -> str:
    outcomes: dict[str, int] = {}
    for _, outcome, _ in writes:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return f"{outcomes}, slowest {max(t for _, _, t in writes) * 1000:.0f} ms"


def test_a_killed_primary_fails_writes_fast_then_the_cache_recovers(
    sentinels: Topology, namespace: str,
) -> None:
    url = sentinels.url()
    cache = FleetCache.from_url(url, namespace=namespace)
    other = FleetCache.from_url(url, namespace=namespace)
    try:
        assert cache.connect(wait=5.0) and other.connect(wait=5.0)
        cache.set("k", "before")
        assert hold(other, "k") == "before"
        victim = sentinels.nodes[sentinels.master_port()]
        victim.kill()
        killed = time.monotonic()
        outcomes = write_loop(cache, "w", 0.5)  # before the sentinels even see it down
        assert all(outcome == "BackendUnavailableError" for _, outcome, _ in outcomes), outcomes
        assert max(took for _, _, took in outcomes) < 1.0, summary(outcomes)
        with pytest.raises(BackendUnavailableError):
            cache.delete("k")
        assert other.get("k", ABSENT) in (ABSENT, "before")  # reads degrade, never raise
        recovered = wait_for_write(cache, 20.0)
        print(f"\nprimary killed: writes failed fast (slowest "
              f"{max(t for _, _, t in outcomes) * 1000:.0f} ms), worked again "
              f"{recovered - killed:.2f} s after the kill")
        cache.set("k", "after")
        assert await_value(other, "k", "after", 3.0)
        stats = procs.await_reconnected(other, 5.0)
        assert stats["l1_flushes"] >= 1, stats  # another run id: nothing held survives
    finally:
        cache.close()
        other.close()
        victim.start()  # back as a replica of the new primary, for whoever comes next


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

