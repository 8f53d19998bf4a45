"""The read path against real servers: L1 -> L2 -> compute, promotion, TTLs, foreign bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import redis

from fleetcache import FleetCache
from fleetcache.testing import FakeClock

from ..faults import l2_replaced
from ..waiting import wait_until

MakeCache = Callable[..., FleetCache]


def set_on_a_quietly(a: FleetCache, b: FleetCache, key: str, value: Any, **kw: Any) -> None:
    """A.set, then wait until B has applied the notice, so it cannot race B's next read."""
    before = b.stats().invalidations_received
    a.set(key, value, **kw)
    assert wait_until(lambda: b.stats().invalidations_received > before), "B never heard A"


def data_key(cache: FleetCache, key: str) -> str:
    return cache.keys.value(key)


def test_l2_hit_is_promoted_and_next_get_is_an_l1_hit(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    value = {"user": 7, "roles": ["a", "b"], "score": 1.5}
    set_on_a_quietly(a, b, "user:7", value)

    first = b.get("user:7")
    s1 = b.stats()
    assert first == value
    assert (s1.l2_hits, s1.promotions, s1.l1_hits, s1.misses) == (1, 1, 0, 0)

    second = b.get("user:7")
    s2 = b.stats()
    assert second == value
    assert second is first  # served from L1: the very same object
    assert (s2.l1_hits, s2.l2_hits, s2.promotions) == (1, 1, 1)


def test_cold_get_with_nothing_anywhere_is_a_miss(cache: FleetCache) -> None:
    assert cache.get("nowhere", "dflt") == "dflt"
    assert cache.get("nowhere") is None
    s = cache.stats()
    assert (s.misses, s.l2_hits, s.l1_hits, s.promotions) == (2, 0, 0, 0)


def test_l1_never_outlives_the_l2_ttl(make_cache: Callable[..., FleetCache]) -> None:
    """On the clock seam: no sleep. l1_ttl is 300 s by default, so only the value's own
    expiry (written into its envelope from the writer's clock) can end the L1 entries."""
    clock = FakeClock()
    a, b = make_cache(clock=clock, ttl_jitter=0), make_cache(clock=clock, ttl_jitter=0)
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    set_on_a_quietly(a, b, "short", "lived", ttl=10)
    assert b.get("short") == "lived"
    assert b.get("short") == "lived"
    assert b.stats().l1_hits == 1  # promoted into B's L1

    clock.advance(9.9)
    assert (a.get("short"), b.get("short")) == ("lived", "lived")
    assert (a.stats().l1_hits, b.stats().l1_hits) == (1, 2)
    clock.advance(0.1)  # at the L2 expiry: neither L1 serves it any more
    a.get("short")
    b.get("short")
    assert (a.stats().l1_hits, b.stats().l1_hits) == (1, 2)


def test_get_many_uses_l2_for_cold_keys(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis
) -> None:
    a, b = pair
    for i in range(3):
        set_on_a_quietly(a, b, f"k{i}", i * 10)
    set_on_a_quietly(a, b, "none", None)

    got = b.get_many(["k0", "k1", "k2", "none", "absent"])
    assert got == {"k0": 0, "k1": 10, "k2": 20, "none": None}
    s = b.stats()
    assert (s.l2_hits, s.misses, s.promotions, s.l1_hits) == (4, 1, 4, 0)

    # Warm now: every found key is an L1 hit, only the absent one goes to Redis again.
    raw.delete(data_key(b, "k1"))  # behind the cache's back: L1 still serves it
    assert b.get_many(["k0", "k1", "k2", "none", "absent"]) == got
    s = b.stats()
    assert (s.l1_hits, s.l2_hits, s.misses) == (4, 4, 2)
    assert b.get_many([]) == {}
    # A key asked twice is two lookups, as two get() calls would be.
    assert b.get_many(["k0", "k0", "absent", "absent"]) == {"k0": 0}
    s = b.stats()
    assert (s.l1_hits, s.l2_hits, s.misses) == (6, 4, 4)


def test_get_many_mixes_l1_hits_and_one_round_trip_for_the_rest(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    set_on_a_quietly(a, b, "warm", "w")
    set_on_a_quietly(a, b, "cold", "c")
    assert b.get("warm") == "w"
    calls: list[list[str]] = []

    class Spy:
        def __init__(self, real: Any) -> None:
            self.real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def get_many(self, keys: list[str]) -> list[bytes | None]:
            calls.append(list(keys))
            return self.real.get_many(keys)  # type: ignore[no-any-return]

        def get(self, key: str) -> bytes | None:
            raise AssertionError("get_many must not fall back to one GET per key")

    with l2_replaced(b, Spy):
        assert b.get_many(["warm", "cold", "nope"]) == {"warm": "w", "cold": "c"}
    assert calls == [["cold", "nope"]]


def test_cached_none_is_not_a_miss(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    set_on_a_quietly(a, b, "nothing", None)
    sentinel = object()

    assert b.get("nothing", sentinel) is None  # from L2
    assert b.get("nothing", sentinel) is None  # from L1
    assert b.get("never-set", sentinel) is sentinel
    s = b.stats()
    assert (s.l2_hits, s.l1_hits, s.misses) == (1, 1, 1)

    def compute() -> str:
        raise AssertionError("a cached None must not be recomputed")

    assert b.get_or_compute("nothing", compute) is None
    assert b.stats().computes == 0


def test_falsy_values_round_trip(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    values = {"zero": 0, "empty-str": "", "empty-list": [], "false": False, "empty-dict": {}}
    for key, value in values.items():
        set_on_a_quietly(a, b, key, value)
    for key, value in values.items():
        got = b.get(key, "MISS")
        assert got == value and type(got) is type(value), key
    assert b.stats().misses == 0


def test_get_or_compute_reads_l2_before_computing(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    set_on_a_quietly(a, b, "have", [1, 2, 3])
    computed: list[int] = []
    assert b.get_or_compute("have", lambda: computed.append(1) or [9]) == [1, 2, 3]
    assert computed == []
    assert b.get_or_compute("fresh", lambda: "made") == "made"
    assert a.get("fresh") == "made"  # stored in L2 for the fleet
    s = b.stats()
    assert s.computes == 1 and s.l2_hits == 1


FOREIGN = [
    pytest.param(b"1", id="redis-cli-SET-k-1"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1\xff\x00garbage", id="garbage"),
    pytest.param(msgspec.msgpack.encode({"v": 1}), id="msgpack-dict"),
    pytest.param(msgspec.msgpack.encode([3, 2**40, 5]), id="future-envelope-version"),
    pytest.param(msgspec.msgpack.encode([1, "soon", 5]), id="bad-expiry-type"),
    pytest.param(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.", id="pickle"),
    pytest.param(msgspec.msgpack.encode([1, 2**40])[:-1], id="truncated"),
]


@pytest.mark.parametrize("blob", FOREIGN)
def test_foreign_bytes_read_as_a_counted_miss(
    cache: FleetCache, raw: redis.Redis, blob: bytes
) -> None:
    raw.set(data_key(cache, "foreign"), blob)
    assert cache.get("foreign", "dflt") == "dflt"
    assert cache.get_many(["foreign"]) == {}
    s = cache.stats()
    assert s.corrupt_values == 2
    assert s.misses == 2
    assert (s.l2_hits, s.promotions, s.l1_hits, s.redis_errors) == (0, 0, 0, 0)
    assert raw.get(data_key(cache, "foreign")) == blob  # read-only: never "repaired"


def test_redis_cli_style_set_reads_as_a_miss_not_49(cache: FleetCache, raw: redis.Redis) -> None:
    # What `redis-cli SET <ns>:v:k 1` leaves: plain MessagePack would decode b"1" to 49.
    raw.execute_command("SET", data_key(cache, "k"), "1")
    assert cache.get("k", "dflt") == "dflt"
    assert cache.stats().corrupt_values == 1


def test_foreign_bytes_under_get_or_compute_give_the_computed_value(
    cache: FleetCache, raw: redis.Redis
) -> None:
    raw.set(data_key(cache, "foreign"), b"\xc1")
    assert cache.get_or_compute("foreign", lambda: "computed") == "computed"
    assert cache.stats().corrupt_values >= 1


def test_foreign_bytes_are_replaced_by_the_computed_value(
    cache: FleetCache, raw: redis.Redis
) -> None:
    """A foreign entry (here without TTL) must not make every call compute again."""
    raw.execute_command("SET", data_key(cache, "foreign"), "1")  # redis-cli SET k 1
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "computed"

    assert cache.get_or_compute("foreign", compute) == "computed"
    assert cache.get_or_compute("foreign", compute) == "computed"
    assert len(calls) == 1, "the foreign entry blocked caching: every call recomputes"


def test_set_overwrites_foreign_bytes(
    cache: FleetCache, make_cache: MakeCache, raw: redis.Redis
) -> None:
    raw.set(data_key(cache, "foreign"), b"\xc1")
    cache.set("foreign", "fixed")
    assert make_cache().get("foreign") == "fixed"  # a cold L1: read from L2


def test_wrong_redis_type_under_the_key_reads_as_a_miss(
    cache: FleetCache, raw: redis.Redis
) -> None:
    raw.hset(data_key(cache, "hash"), "f", "v")  # GET answers WRONGTYPE
    assert cache.get("hash", "dflt") == "dflt"
    assert cache.get_many(["hash"]) == {}  # MGET answers nil for a wrong type
    assert cache.stats().misses == 2
