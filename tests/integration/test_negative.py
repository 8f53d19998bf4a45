"""Negative caching: a compute that finds nothing returns NOT_FOUND, cached for negative_ttl."""

from __future__ import annotations

import pytest
import redis

from fleetcache import NOT_FOUND, FleetCache, InvalidArgumentError, NotFound
from fleetcache.testing import FakeClock

from ..waiting import wait_until


class Lookup:
    """A database lookup that finds nothing (or ``found``), counting its calls."""

    def __init__(self, found: object = NOT_FOUND) -> None:
        self.found = found
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.found


@pytest.fixture
def pair(clocked_pair: tuple[FleetCache, FleetCache]) -> tuple[FleetCache, FleetCache]:
    return clocked_pair


def test_not_found_is_cached_fleet_wide_for_negative_ttl(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis,
) -> None:
    a, b = pair
    lookup = Lookup()
    assert a.get_or_compute("user:9", lookup, ttl=3600, negative_ttl=30) is NOT_FOUND
    assert a.get_or_compute("user:9", lookup, ttl=3600, negative_ttl=30) is NOT_FOUND  # L1
    assert wait_until(lambda: b.stats().invalidations_received == 1)  # a's fill notice
    assert b.get_or_compute("user:9", lookup, ttl=3600, negative_ttl=30) is NOT_FOUND  # L2
    assert b.get_or_compute("user:9", lookup, ttl=3600, negative_ttl=30) is NOT_FOUND  # L1
    assert lookup.calls == 1
    assert 0 < raw.pttl(a.keys.value("user:9")) <= 30_000  # its own, shorter TTL
    assert a.stats().l1_hits == 1 and b.stats().l1_hits == 1


def test_a_cached_not_found_expires_on_its_own_ttl(pair: tuple[FleetCache, FleetCache],
                                                   clock: FakeClock) -> None:
    a, _ = pair
    lookup = Lookup()
    a.get_or_compute("k", lookup, ttl=3600, negative_ttl=30)
    clock.advance(31)
    lookup.found = {"now": "here"}
    assert a.get_or_compute("k", lookup, ttl=3600, negative_ttl=30) == {"now": "here"}
    assert lookup.calls == 2


def test_plain_reads_see_a_cached_not_found_as_a_miss(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    a.get_or_compute("k", Lookup(), negative_ttl=30)
    assert a.get("k") is None and b.get("k", "dflt") == "dflt"
    assert b.get_many(["k"]) == {}
    a.set("none", None)  # a cached None is a value, not NOT_FOUND
    assert b.get_or_compute("none", Lookup("x"), negative_ttl=30) is None


def test_a_write_ends_a_cached_not_found_everywhere(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    for cache in (a, b):
        assert cache.get_or_compute("k", Lookup(), negative_ttl=30) is NOT_FOUND
    b.set("k", "created")  # its notice drops a's cached NOT_FOUND
    assert wait_until(lambda: a.get_or_compute("k", Lookup(), negative_ttl=30) == "created")
    assert b.get_or_compute("k", Lookup(), negative_ttl=30) == "created"  # its own write
    a.delete("k")
    assert wait_until(
        lambda: b.get_or_compute("k", Lookup("again"), negative_ttl=30) == "again")


def test_without_negative_ttl_not_found_is_returned_and_not_cached(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis,
) -> None:
    a, _ = pair
    lookup = Lookup()
    assert a.get_or_compute("k", lookup) is NOT_FOUND
    assert a.get_or_compute("k", lookup) is NOT_FOUND
    assert lookup.calls == 2
    assert raw.get(a.keys.value("k")) is None
    assert raw.get(a.keys.lock("k")) is None  # and its fill lock was released


def test_cached_takes_negative_ttl(pair: tuple[FleetCache, FleetCache]) -> None:
    a, _ = pair
    lookup = Lookup()

    @a.cached(negative_ttl=30, key_prefix="user")
    def user(uid: int) -> object:
        return lookup()

    assert user(1) is NOT_FOUND and user(1) is NOT_FOUND
    assert lookup.calls == 1


def test_not_found_is_one_falsy_sentinel() -> None:
    assert NotFound() is NOT_FOUND and not NOT_FOUND
    assert repr(NOT_FOUND) == "fleetcache.NOT_FOUND"


@pytest.mark.parametrize("bad", [0, -1, "30"])
def test_negative_ttl_is_validated(cache: FleetCache, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="negative_ttl"):
        cache.get_or_compute("k", Lookup(), negative_ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="negative_ttl"):
        cache.cached(negative_ttl=bad)  # type: ignore[arg-type]
