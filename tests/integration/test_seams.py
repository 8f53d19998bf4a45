"""The seams a user can pass in: an existing redis-py client, and the clock."""

from __future__ import annotations

import pytest
import redis

from fleetcache import ConfigError, FleetCache
from fleetcache.testing import FakeClock, connections

from ..servers import Server


def test_an_existing_client_is_used_as_it_is_and_left_open(
    server: Server, namespace: str
) -> None:
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    cache = FleetCache.from_client(client, namespace=namespace)
    other = FleetCache(url=server.url, namespace=namespace)
    try:
        assert cache.connect(wait=5.0) and other.connect(wait=5.0)
        cache.set("k", {"v": 1})
        assert other.get("k") == {"v": 1}  # the same server, the same layout
        used = connections(cache)
        assert used is not None and used.client is client
    finally:
        cache.close()
        other.close()
    assert client.ping()  # close() left the application's pool alone
    assert client.get(f"{namespace}:v:k") is not None
    client.close()


def test_a_client_that_decodes_replies_is_refused(server: Server) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    with pytest.raises(ConfigError, match="decode_responses"):
        FleetCache(client=client)
    with pytest.raises(ConfigError, match=r"redis\.Redis"):
        FleetCache(client="redis://127.0.0.1:1/0")  # type: ignore[arg-type]


def test_ttls_read_the_injected_clock(server: Server, namespace: str) -> None:
    """A 300 s L1 TTL and a 60 s value expire by clock.advance, not by waiting."""
    clock = FakeClock()
    cache = FleetCache(url=server.url, namespace=namespace, clock=clock, l1_ttl=30)
    try:
        assert cache.connect(wait=5.0)
        cache.set("k", "v", ttl=60)
        assert cache.get("k") == "v" and cache.stats().l1_hits == 1
        clock.advance(29.9)
        assert cache.get("k") == "v" and cache.stats().l1_hits == 2
        clock.advance(0.1)  # l1_ttl is over: the next read goes to L2 (and promotes again)
        assert cache.get("k") == "v"
        assert (cache.stats().l1_hits, cache.stats().l2_hits) == (2, 1)
        clock.advance(30.0)  # at the value's own expiry (by the injected clock) it is gone,
        assert cache.get("k") is None  # though Redis's real PX has not run out
        stats = cache.stats()
        assert (stats.l2_hits, stats.misses, stats.promotions) == (1, 1, 1)
    finally:
        cache.close()
