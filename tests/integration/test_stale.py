"""Serve-stale and fail-safe (``stale_ttl``) against a real server, time on a fake clock.

The clock decides freshness (every cache here shares one :class:`FakeClock`); Redis keeps
values by real time, ``ttl + stale_ttl`` seconds, which no test waits out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from fleetcache import FleetCache, InvalidArgumentError
from fleetcache.testing import FakeClock

from ..servers import Server
from ..waiting import wait_until

TTL, STALE = 10.0, 100.0


@pytest.fixture
def pair(clocked_pair: tuple[FleetCache, FleetCache]) -> tuple[FleetCache, FleetCache]:
    return clocked_pair


class Gate:
    """A compute that counts its calls and returns ``value`` once the test opens it."""

    def __init__(self, value: Any = "v2", *, raises: bool = False) -> None:
        self.value = value
        self.raises = raises
        self.calls = 0
        self.opened = threading.Event()
        self.started = threading.Event()

    def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        assert self.opened.wait(5.0), "the test never opened the gate"
        if self.raises:
            raise RuntimeError("the database is down")
        return self.value


def stale_in_l2(cache: FleetCache, clock: FakeClock, key: str = "k") -> None:
    """``key`` holds "v1", computed, and is now past its fresh time."""
    assert cache.get_or_compute(key, lambda: "v1", ttl=TTL, stale_ttl=STALE) == "v1"
    clock.advance(TTL + 1)


@pytest.fixture
def raw(server: Server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def test_a_stale_value_is_served_at_once_while_one_worker_refreshes(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock,
) -> None:
    a, b = pair
    stale_in_l2(a, clock)
    gate = Gate()
    started = time.monotonic()
    assert b.get_or_compute("k", gate, ttl=TTL, stale_ttl=STALE) == "v1"  # from L2
    assert a.get_or_compute("k", gate, ttl=TTL, stale_ttl=STALE) == "v1"  # from its L1
    assert time.monotonic() - started < 0.5, "a caller waited for the refresh"
    assert gate.started.wait(5.0)
    for _ in range(20):  # more callers, both workers, while the refresh runs
        assert a.get_or_compute("k", gate, ttl=TTL, stale_ttl=STALE) == "v1"
        assert b.get_or_compute("k", gate, ttl=TTL, stale_ttl=STALE) == "v1"
    gate.opened.set()
    assert wait_until(lambda: a.get("k") == "v2" and b.get("k") == "v2", timeout=5.0)
    assert gate.calls == 1  # one recompute for the fleet
    assert a.stats().refreshes + b.stats().refreshes == 1
    assert a.stats().stale_served + b.stats().stale_served >= 42
    clock.advance(TTL - 1)  # the refreshed value is fresh for a whole ttl
    assert b.get_or_compute("k", gate, ttl=TTL, stale_ttl=STALE) == "v2"
    assert gate.calls == 1


def test_a_failing_refresh_keeps_serving_the_stale_value_and_is_throttled(
    make_cache: Callable[..., FleetCache], clock: FakeClock, raw: redis.Redis,
) -> None:
    a, b = (make_cache(clock=clock, fail_safe_throttle=30.0) for _ in range(2))
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    stale_in_l2(a, clock)
    boom = Gate(raises=True)
    boom.opened.set()
    assert a.get_or_compute("k", boom, ttl=TTL, stale_ttl=STALE) == "v1"
    assert wait_until(lambda: a.stats().refresh_errors == 1, timeout=5.0)
    for cache in (a, b, a, b):  # no error reaches a caller; nobody retries yet
        assert cache.get_or_compute("k", boom, ttl=TTL, stale_ttl=STALE) == "v1"
    time.sleep(0.2)  # room for a (wrong) second refresh to start
    assert boom.calls == 1
    assert b.stats().refresh_errors == 0
    pttl = raw.pttl(a.keys.lock("k"))
    assert 25_000 < pttl <= 30_000  # the fleet-wide throttle: the lock is kept
    assert raw.exists(a.keys.value("k"))  # and the stale value with it


def write_during_a_refresh(a: FleetCache, clock: FakeClock, write: Callable[[], object]) -> None:
    """``a`` refreshes a stale "k"; ``write`` lands while its compute runs; the refresh
    finishes and is revoked (its value is not stored)."""
    stale_in_l2(a, clock)
    gate = Gate("from the refresh")
    assert a.get_or_compute("k", gate, ttl=TTL, stale_ttl=STALE) == "v1"
    assert gate.started.wait(5.0)
    assert write()
    gate.opened.set()
    assert wait_until(lambda: a.stats().fills_revoked == 1, timeout=5.0)


def test_a_delete_during_a_refresh_is_not_undone(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock, raw: redis.Redis,
) -> None:
    a, b = pair
    write_during_a_refresh(a, clock, lambda: b.delete("k"))  # the database row is gone
    assert raw.get(a.keys.value("k")) is None
    assert a.get("k") is None and b.get("k") is None


def test_a_set_during_a_refresh_wins(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock,
) -> None:
    a, b = pair
    write_during_a_refresh(a, clock, lambda: b.set("k", "newer", ttl=TTL) is None)
    assert a.get("k") == "newer" and b.get("k") == "newer"


def test_a_value_deleted_before_its_refresh_is_not_resurrected(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock, raw: redis.Redis,
) -> None:
    a, _ = pair
    stale_in_l2(a, clock)
    raw.delete(a.keys.value("k"))  # gone without a notice (evicted, FLUSHDB): a keeps L1's
    gate = Gate()
    gate.opened.set()
    assert a.get_or_compute("k", gate, ttl=TTL, stale_ttl=STALE) == "v1"  # its L1 copy
    time.sleep(0.2)
    assert gate.calls == 0  # the refresh found nothing to refresh
    assert raw.get(a.keys.value("k")) is None


def test_past_the_window_the_compute_runs_in_the_foreground(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock,
) -> None:
    a, b = pair
    stale_in_l2(a, clock)
    clock.advance(STALE)  # past ttl + stale_ttl on the clock; Redis still holds the bytes
    assert b.get_or_compute("k", lambda: "v2", ttl=TTL, stale_ttl=STALE) == "v2"
    assert a.get("k") == "v2"


def test_a_caller_without_a_window_never_gets_a_stale_value(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock,
) -> None:
    a, b = pair
    stale_in_l2(a, clock)
    assert b.get("k") is None  # a plain read: stale is a miss
    assert b.get_many(["k"]) == {}
    assert b.get_or_compute("k", lambda: "v2", ttl=TTL) == "v2"  # computed, in the foreground
    assert a.get("k") == "v2"


def test_redis_down_serves_the_stale_copy_in_l1(
    own_server: Server, caches: Callable[..., FleetCache], clock: FakeClock,
) -> None:
    cache = caches(own_server.url, clock=clock)
    assert cache.connect(wait=5.0)
    stale_in_l2(cache, clock)
    own_server.kill()
    boom = Gate(raises=True)
    boom.opened.set()
    started = time.monotonic()
    assert cache.get_or_compute("k", boom, ttl=TTL, stale_ttl=STALE) == "v1"
    assert time.monotonic() - started < 1.5
    assert wait_until(lambda: cache.stats().redis_errors >= 1, timeout=5.0)
    assert boom.calls == 0


def test_cached_takes_a_stale_ttl(pair: tuple[FleetCache, FleetCache],
                                  clock: FakeClock) -> None:
    a, _ = pair
    calls: list[int] = []

    @a.cached(ttl=TTL, stale_ttl=STALE, key_prefix="price")
    def price(item: int) -> int:
        calls.append(item)
        return 100 + len(calls)

    assert price(1) == 101
    clock.advance(TTL + 1)
    assert price(1) == 101  # stale, at once
    assert wait_until(lambda: len(calls) == 2, timeout=5.0)
    assert wait_until(lambda: price(1) == 102, timeout=5.0)


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), "10"])
def test_stale_ttl_is_validated(cache: FleetCache, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="stale_ttl"):
        cache.get_or_compute("k", lambda: 1, stale_ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="stale_ttl"):
        cache.cached(stale_ttl=bad)  # type: ignore[arg-type]


# -- refresh-ahead and soft timeout ---------------------------------------------------------


def test_refresh_ahead_refreshes_a_hot_key_before_it_goes_stale(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock,
) -> None:
    a, b = pair
    assert a.get_or_compute("k", lambda: "v1", ttl=TTL, refresh_ahead=0.8) == "v1"
    gate = Gate()
    clock.advance(TTL * 0.8 - 0.1)  # before the refresh point: plain L1 hits
    assert a.get_or_compute("k", gate, ttl=TTL, refresh_ahead=0.8) == "v1"
    assert gate.calls == 0
    clock.advance(0.2)  # past it, still fresh: answered at once, one refresh starts
    started = time.monotonic()
    assert a.get_or_compute("k", gate, ttl=TTL, refresh_ahead=0.8) == "v1"
    assert b.get_or_compute("k", gate, ttl=TTL, refresh_ahead=0.8) == "v1"  # from L2
    assert time.monotonic() - started < 0.5
    assert gate.started.wait(5.0)
    gate.opened.set()
    assert wait_until(lambda: a.get("k") == "v2" and b.get("k") == "v2", timeout=5.0)
    assert gate.calls == 1
    assert a.stats().stale_served == b.stats().stale_served == 0  # never stale
    assert a.stats().refreshes + b.stats().refreshes == 1


def test_soft_timeout_waits_a_little_for_the_refresh(
    pair: tuple[FleetCache, FleetCache], clock: FakeClock,
) -> None:
    a, _ = pair
    stale_in_l2(a, clock)
    quick = Gate("v2")
    quick.opened.set()  # a compute that lands within the soft timeout
    assert a.get_or_compute("k", quick, ttl=TTL, stale_ttl=STALE, soft_timeout=2.0) == "v2"
    clock.advance(TTL + 1)  # stale again
    slow = Gate("v3")  # a compute that does not
    started = time.monotonic()
    assert a.get_or_compute("k", slow, ttl=TTL, stale_ttl=STALE, soft_timeout=0.2) == "v2"
    assert 0.15 < time.monotonic() - started < 1.0  # waited the soft timeout, no longer
    slow.opened.set()  # the compute finishes in the background and stores
    assert wait_until(lambda: a.get("k") == "v3", timeout=5.0)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, True, "0.8"])
def test_refresh_ahead_is_validated(cache: FleetCache, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="refresh_ahead"):
        cache.get_or_compute("k", lambda: 1, refresh_ahead=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="refresh_ahead"):
        cache.cached(refresh_ahead=bad)  # type: ignore[arg-type]


def test_soft_timeout_is_validated(cache: FleetCache) -> None:
    with pytest.raises(InvalidArgumentError, match="soft_timeout"):
        cache.get_or_compute("k", lambda: 1, stale_ttl=10, soft_timeout=-1)
