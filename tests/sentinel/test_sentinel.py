"""fleetcache on a Sentinel deployment: the same behaviour as on one server, then failovers.

Real processes (forked workers, :mod:`tests.integration.procs`) on
``redis+sentinel://...``: the core behaviour suite (:mod:`tests.integration.deployment`).
Then the primary moves (``SENTINEL FAILOVER``, and a killed primary): every
worker notices and flushes (the new primary has another run id), writes fail fast with a
``BackendError`` or succeed while it happens and succeed after it, and no read is served
stale past the documented bound once the new primary took a write.

The module shares one deployment; the failover tests come last.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from fleetcache import ConfigError, FleetCache
from fleetcache.core.config import parse_sentinel_url

from ..integration import procs
from ..integration.deployment import (
    DeploymentSuite,
    bus_stats,
    lose_the_primary,
    summary,
    write_loop,
)
from ..integration.procs import Fleet, await_value, connected, hold
from .topology import Topology

pytestmark = pytest.mark.slow

SLACK = 0.5  # scheduling slack on top of a documented bound (2 shared cores)


# -- commands run in the workers ------------------------------------------------------------


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


# -- the core behaviour (tests.integration.deployment) --------------------------------------


class TestCoreBehaviourOnSentinel(DeploymentSuite):
    @pytest.fixture
    def url(self, sentinels: Topology) -> str:
        return sentinels.url()


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


def test_a_killed_primary_fails_writes_fast_then_the_cache_recovers(
    sentinels: Topology, namespace: str,
) -> None:
    victim = sentinels.nodes[sentinels.master_port()]
    # back as a replica of the new primary, for whoever comes next
    lose_the_primary(sentinels.url(), namespace, fail=victim.kill, restore=victim.start,
                     label="killed")
