"""FleetCache's public API against fakeredis's TCP server on a free loopback port.

fakeredis speaks RESP over a real socket here, so the cache runs its real redis-py pool,
pub/sub listener (PINGs included) and pottery Redlock (Lua through ``fakeredis[lua]``).
Each test gets its own namespace; raw keys are checked with a plain redis-py client.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from fleetcache import (
    BackendError,
    BackendUnavailableError,
    CacheClosedError,
    CacheStrategy,
    FleetCache,
    FleetCacheError,
    Health,
    InvalidArgumentError,
    InvalidKeyError,
    ValueEncodeError,
    ValueTooLargeError,
)

from ..helpers import namespace_data_keys, run_threads, serving

fakeredis = pytest.importorskip("fakeredis")
pytest.importorskip("lupa", reason="pottery's Redlock needs Lua: install fakeredis[lua]")

MAX_KEY = 32

Factory = Callable[..., FleetCache]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    """A fakeredis TCP server on a free loopback port, served from a daemon thread."""
    with serving(fakeredis.TcpFakeServer(("127.0.0.1", 0))) as url:
        yield url


@pytest.fixture(scope="module")
def raw(fake_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fake_url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    client.close()


@pytest.fixture
def make(fake_url: str, namespace: str) -> Iterator[Factory]:
    """Caches on the fake server in this test's namespace, connected; closed after the test."""
    made: list[FleetCache] = []

    def factory(*, connect: bool = True, **options: Any) -> FleetCache:
        options.setdefault("namespace", namespace)
        options.setdefault("max_key_length", MAX_KEY)
        cache = FleetCache.from_url(fake_url, **options)
        made.append(cache)
        if connect:  # else nothing connects until first use (argument checks come first)
            assert cache.connect(wait=3.0), "invalidation bus did not subscribe"
        return cache

    yield factory
    # In parallel: each close waits up to one listener poll (~0.1 s) for its thread.
    run_threads([threading.Thread(target=cache.close) for cache in made], 10)


@pytest.fixture
def cache(make: Factory) -> FleetCache:
    return make()


@pytest.fixture
def idle(make: Factory) -> FleetCache:
    """A cache never used yet: a call that fails its argument checks must not connect."""
    return make(connect=False)


def l2_key(namespace: str, key: str) -> str:
    """Where a value lives in Redis (``{namespace}:v:{key}``, see fleetcache.l2)."""
    return f"{namespace}:v:{key}"


namespace_keys = namespace_data_keys


def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def wait_received(cache: FleetCache, count: int) -> None:
    """Wait until ``cache`` has applied ``count`` notices from others (so reads do not race)."""
    assert eventually(lambda: cache.stats().invalidations_received >= count)
    assert cache.stats().invalidations_received == count


class Counter:
    """A compute function that counts its calls."""

    def __init__(self, result: Any = "computed") -> None:
        self.calls = 0
        self.result = result

    def __call__(self) -> Any:
        self.calls += 1
        return self.result


class Unencodable:
    pass


# -- set / get / delete ----------------------------------------------------------------------


def test_set_get_delete(cache: FleetCache, raw: redis.Redis, namespace: str) -> None:
    cache.set("user:1", {"name": "ada", "tags": ["x", "y"]})
    assert cache.get("user:1") == {"name": "ada", "tags": ["x", "y"]}
    assert raw.exists(l2_key(namespace, "user:1")) == 1
    assert cache.delete("user:1") is True
    assert cache.get("user:1") is None
    assert raw.exists(l2_key(namespace, "user:1")) == 0
    assert cache.delete("user:1") is False


def test_value_written_by_one_cache_is_read_by_another(make: Factory) -> None:
    writer, reader = make(), make()
    writer.set("k", [1, 2, 3])
    assert reader.get("k") == [1, 2, 3]
    assert reader.stats().l2_hits == 1


def test_overwrite_reaches_other_caches_l1(make: Factory) -> None:
    writer, reader = make(), make()
    writer.set("k", "v1")
    wait_received(reader, 1)
    assert reader.get("k") == "v1"
    assert reader.get("k") == "v1"
    assert reader.stats().l1_hits == 1  # now held in the reader's L1
    writer.set("k", "v2")
    assert eventually(lambda: reader.get("k") == "v2")
    writer.delete("k")
    assert eventually(lambda: reader.get("k", "gone") == "gone")


def test_get_default_versus_cached_none(make: Factory) -> None:
    writer, reader = make(), make()
    assert writer.get("missing") is None
    assert writer.get("missing", "dflt") == "dflt"
    writer.set("none", None)
    wait_received(reader, 1)
    assert writer.get("none", "dflt") is None  # L1 hit path
    assert reader.get("none", "dflt") is None  # L2 hit path
    assert reader.get("none", "dflt") is None  # promoted: L1 hit path of another cache
    stats = reader.stats()
    assert (stats.l2_hits, stats.l1_hits, stats.misses) == (1, 1, 0)


def test_get_many(make: Factory) -> None:
    writer, reader = make(), make()
    writer.set("a", 1)
    writer.set("b", None)
    wait_received(reader, 2)
    assert reader.get_many(["a", "b", "missing"]) == {"a": 1, "b": None}
    stats = reader.stats()
    assert (stats.l2_hits, stats.misses, stats.promotions) == (2, 1, 2)
    assert reader.get_many(["a", "b", "missing"]) == {"a": 1, "b": None}
    stats = reader.stats()
    assert (stats.l1_hits, stats.l2_hits, stats.misses) == (2, 2, 2)
    assert writer.get_many(["a", "b"]) == {"a": 1, "b": None}
    assert writer.stats().l1_hits == 2
    assert reader.get_many([]) == {}


def test_foreign_bytes_in_l2_read_as_a_miss(
    cache: FleetCache, raw: redis.Redis, namespace: str
) -> None:
    raw.set(l2_key(namespace, "cli"), b"1")  # what `redis-cli SET k 1` writes
    assert cache.get("cli", "dflt") == "dflt"
    assert cache.get_many(["cli"]) == {}
    stats = cache.stats()
    assert stats.corrupt_values == 2
    assert stats.misses == 2


def test_damaged_envelope_in_l2_reads_as_a_miss(
    cache: FleetCache, raw: redis.Redis, namespace: str
) -> None:
    # A valid envelope whose payload is a str with invalid UTF-8.
    raw.set(l2_key(namespace, "bad"), b"\x93\x01\xcf" + b"\x7f" + b"\xff" * 7 + b"\xa1\xff")
    assert cache.get("bad", "dflt") == "dflt"
    assert cache.stats().corrupt_values == 1


# -- key validation --------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(123, id="int"),
    pytest.param(None, id="None"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(["list"], id="unhashable-list"),
    pytest.param(("t",), id="tuple"),
    pytest.param("", id="empty"),
    pytest.param("x" * (MAX_KEY + 1), id="too-long"),
]

OPERATIONS: dict[str, Callable[[FleetCache, Any, Counter], object]] = {
    "get": lambda c, k, f: c.get(k),
    "get-default": lambda c, k, f: c.get(k, "dflt"),
    "set": lambda c, k, f: c.set(k, "v"),
    "delete": lambda c, k, f: c.delete(k),
    "get_or_compute": lambda c, k, f: c.get_or_compute(k, f),
    "get_many": lambda c, k, f: c.get_many(["fine", k]),
}


@pytest.mark.parametrize("op", sorted(OPERATIONS))
@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_raise_invalid_key_error(
    idle: FleetCache, raw: redis.Redis, namespace: str, op: str, key: Any
) -> None:
    compute = Counter()
    with pytest.raises(InvalidKeyError):
        OPERATIONS[op](idle, key, compute)
    assert compute.calls == 0
    assert namespace_keys(raw, namespace) == []


def test_invalid_key_error_is_a_value_error() -> None:
    assert issubclass(InvalidKeyError, ValueError)
    assert issubclass(InvalidKeyError, FleetCacheError)


def test_key_at_max_length_is_fine(cache: FleetCache) -> None:
    key = "k" * MAX_KEY
    cache.set(key, 1)
    assert cache.get(key) == 1
    assert cache.get_or_compute("c" * MAX_KEY, Counter(5)) == 5


# -- TTLs ------------------------------------------------------------------------------------


def test_ttl_and_strategy_are_mutually_exclusive(
    idle: FleetCache, raw: redis.Redis, namespace: str
) -> None:
    compute = Counter()
    with pytest.raises(InvalidArgumentError):
        idle.set("k", 1, ttl=5, strategy=CacheStrategy.SHORT_TERM)
    with pytest.raises(InvalidArgumentError):
        idle.get_or_compute("k", compute, ttl=5, strategy=CacheStrategy.SHORT_TERM)
    with pytest.raises(InvalidArgumentError):
        idle.cached(5, strategy=CacheStrategy.SHORT_TERM)
    assert compute.calls == 0
    assert namespace_keys(raw, namespace) == []


@pytest.mark.parametrize(
    "ttl", [0, 0.0, -1, -0.001, math.nan, math.inf, True, "10"], ids=repr
)
def test_bad_ttl_is_rejected_and_nothing_written(
    idle: FleetCache, raw: redis.Redis, namespace: str, ttl: Any
) -> None:
    compute = Counter()
    with pytest.raises(InvalidArgumentError):
        idle.set("k", 1, ttl=ttl)
    with pytest.raises(InvalidArgumentError):
        idle.get_or_compute("k", compute, ttl=ttl)
    with pytest.raises(InvalidArgumentError):
        idle.cached(ttl)
    assert compute.calls == 0
    assert namespace_keys(raw, namespace) == []


def test_strategy_must_be_a_cache_strategy(
    idle: FleetCache, raw: redis.Redis, namespace: str
) -> None:
    with pytest.raises(InvalidArgumentError):
        idle.set("k", 1, strategy=10)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        idle.get_or_compute("k", Counter(), strategy=600)  # type: ignore[arg-type]
    assert namespace_keys(raw, namespace) == []


def test_ttl_strategy_and_default_reach_redis(
    make: Factory, raw: redis.Redis, namespace: str
) -> None:
    cache = make(default_ttl=123, ttl_jitter=0)  # exact TTLs (jitter: test_jitter.py)
    cache.set("ttl", 1, ttl=2)
    cache.set("strategy", 1, strategy=CacheStrategy.SHORT_TERM)
    cache.set("default", 1)
    cache.get_or_compute("computed", Counter(), ttl=50)
    assert 0 < raw.pttl(l2_key(namespace, "ttl")) <= 2000
    assert 299_000 < raw.pttl(l2_key(namespace, "strategy")) <= 300_000
    assert 122_000 < raw.pttl(l2_key(namespace, "default")) <= 123_000
    assert 49_000 < raw.pttl(l2_key(namespace, "computed")) <= 50_000


def test_sub_millisecond_ttl_is_not_a_backend_error(
    cache: FleetCache, raw: redis.Redis, namespace: str
) -> None:
    # 0.0004 s passes "ttl > 0"; it must be refused up front or stored, never sent as PX 0.
    try:
        cache.set("tiny", 1, ttl=0.0004)
    except InvalidArgumentError:
        assert namespace_keys(raw, namespace) == []


# -- unencodable and oversized values --------------------------------------------------------


def test_unencodable_value_writes_nothing(
    make: Factory, raw: redis.Redis, namespace: str
) -> None:
    cache, other = make(), make()
    cache.set("k", "old")
    stored = raw.get(l2_key(namespace, "k"))
    sent = cache.stats().invalidations_sent
    with pytest.raises(ValueEncodeError) as info:
        cache.set("k", {"nested": Unencodable()})
    assert info.value.key == "k"
    assert info.value.value_type is Unencodable
    with pytest.raises(ValueEncodeError):
        cache.set("fresh", object())
    assert raw.get(l2_key(namespace, "k")) == stored
    assert raw.exists(l2_key(namespace, "fresh")) == 0
    assert cache.get("k") == "old"
    assert other.get("k") == "old"
    assert cache.stats().invalidations_sent == sent


def test_oversized_value_writes_nothing(make: Factory, raw: redis.Redis, namespace: str) -> None:
    cache = make(max_value_bytes=64)
    cache.set("k", "small")
    with pytest.raises(ValueTooLargeError):
        cache.set("k", "x" * 100)
    with pytest.raises(ValueTooLargeError):
        cache.set("big", "x" * 100)
    assert raw.exists(l2_key(namespace, "big")) == 0
    assert cache.get("k") == "small"


# -- get_or_compute and stats ----------------------------------------------------------------


def test_get_or_compute_computes_once(cache: FleetCache, make: Factory) -> None:
    compute = Counter({"answer": 42})
    assert cache.get_or_compute("k", compute) == {"answer": 42}
    assert cache.get_or_compute("k", compute) == {"answer": 42}
    assert make().get_or_compute("k", compute) == {"answer": 42}  # from L2
    assert compute.calls == 1


def test_get_or_compute_caches_none(cache: FleetCache) -> None:
    compute = Counter(None)
    assert cache.get_or_compute("k", compute) is None
    assert cache.get_or_compute("k", compute) is None
    assert compute.calls == 1
    assert cache.get("k", "dflt") is None


def test_compute_error_reaches_caller_and_nothing_is_cached(
    cache: FleetCache, raw: redis.Redis, namespace: str
) -> None:
    def boom() -> int:
        raise KeyError("db down")

    with pytest.raises(KeyError):
        cache.get_or_compute("k", boom)
    assert namespace_keys(raw, namespace) == []  # no value, and the lock was released
    compute = Counter(7)
    assert cache.get_or_compute("k", compute) == 7
    assert compute.calls == 1


def test_stats_counters(make: Factory) -> None:
    writer, reader = make(), make()
    fresh = reader.stats()
    assert fresh.lookups == 0
    assert fresh.hit_rate == 0.0
    writer.set("k", "v")
    wait_received(reader, 1)
    assert reader.get("k") == "v"  # L2 hit, promoted
    assert reader.get("k") == "v"  # L1 hit
    assert reader.get("nope") is None  # miss
    compute = Counter()
    assert reader.get_or_compute("g", compute) == "computed"  # miss + compute
    assert reader.get_or_compute("g", compute) == "computed"  # L1 hit
    stats = reader.stats()
    assert stats.l1_hits == 2
    assert stats.l2_hits == 1
    assert stats.misses == 2
    assert stats.promotions == 1
    assert stats.computes == 1
    assert stats.in_flight == 0
    assert stats.lookups == 5
    assert stats.hit_rate == pytest.approx(3 / 5)
    assert stats.invalidations_received == 1
    writer_stats = writer.stats()
    assert writer_stats.invalidations_sent == 1
    assert (writer_stats.l1_hits, writer_stats.l2_hits, writer_stats.misses) == (0, 0, 0)


# -- the cached decorator --------------------------------------------------------------------


def test_cached_decorator(make: Factory) -> None:
    cache = make(max_key_length=1024)  # default prefixes are module.qualname: long
    calls: list[tuple[int, int]] = []

    @cache.cached(ttl=60, key_prefix="add")  # a closure (of calls): it needs a prefix
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    assert add(1, 2) == 3
    assert add(1, 2) == 3
    assert calls == [(1, 2)]
    assert add(2, 1) == 3
    assert calls == [(1, 2), (2, 1)]
    assert add.key(1, 2) != add.key(2, 1)
    assert add.key(1, 2) == add.key(1, 2)
    assert add.key(1, 2) != add.key(1, b=2)
    assert add.__name__ == "add"
    assert add.invalidate(1, 2) is True
    assert add.invalidate(1, 2) is False
    assert add(1, 2) == 3
    assert calls == [(1, 2), (2, 1), (1, 2)]


def test_cached_keys_are_shared_across_caches_and_prefixed(make: Factory) -> None:
    first, second = make(max_key_length=1024), make(max_key_length=1024)
    calls = Counter(10)

    def compute(x: int) -> int:
        return calls()

    one = first.cached(key_prefix="report")(compute)
    two = second.cached(key_prefix="report")(compute)
    assert one.key(5) == two.key(5)
    assert one.key(5).startswith("report:")
    assert one(5) == 10
    assert two(5) == 10
    assert calls.calls == 1


def test_cached_with_unencodable_args_raises(idle: FleetCache) -> None:
    calls = Counter()

    @idle.cached(ttl=60, key_prefix="fn")
    def fn(arg: Any) -> Any:
        return calls()

    with pytest.raises(ValueEncodeError):
        fn(Unencodable())
    with pytest.raises(ValueEncodeError):
        fn.invalidate(Unencodable())
    assert calls.calls == 0


def test_cached_unencodable_args_error_names_the_argument_type(idle: FleetCache) -> None:
    @idle.cached(ttl=60)
    def fn(arg: Any) -> Any:
        return arg

    with pytest.raises(ValueEncodeError) as info:
        fn(Unencodable())
    assert info.value.value_type is Unencodable
    assert "Unencodable" in str(info.value)


# -- clear -----------------------------------------------------------------------------------


def test_clear_only_touches_its_namespace(
    make: Factory, raw: redis.Redis, namespace: str
) -> None:
    mine, twin = make(), make()
    neighbour = make(namespace=namespace + "x")  # shares the prefix text, not the namespace
    raw.set("unrelated", b"keep")
    mine.set("a", 1)
    mine.set("b", 2)
    neighbour.set("a", "theirs")
    entry_id = mine.publish_to_stream("events", {"f": "v"})
    wait_received(twin, 2)
    assert twin.get("a") == 1
    assert twin.get("a") == 1
    assert twin.stats().l1_hits == 1  # held in the twin's L1
    assert mine.clear() == 2
    assert mine.get("a") is None
    assert mine.get("b") is None
    assert eventually(lambda: twin.get("a", "flushed") == "flushed")
    assert neighbour.get("a") == "theirs"
    assert raw.get("unrelated") == b"keep"
    assert raw.exists(l2_key(namespace + "x", "a")) == 1
    assert [e[0] for e in mine.read_stream_latest("events")] == [entry_id]  # streams stay
    raw.delete("unrelated")


# -- lifecycle and health --------------------------------------------------------------------

CLOSED_OPERATIONS: dict[str, Callable[[FleetCache], object]] = {
    "get": lambda c: c.get("k"),
    "get_many": lambda c: c.get_many(["k"]),
    "set": lambda c: c.set("k", 2),
    "delete": lambda c: c.delete("k"),
    "get_or_compute": lambda c: c.get_or_compute("k", Counter()),
    "clear": lambda c: c.clear(),
    "health": lambda c: c.health(),
    "connect": lambda c: c.connect(),
    "publish_to_stream": lambda c: c.publish_to_stream("s", {"f": "v"}),
}


def test_use_after_close_raises(make: Factory) -> None:
    cache = make()
    cache.set("k", 1)  # in L1 too: a closed cache must not serve it
    cache.close()
    not_raised = []
    for name, op in sorted(CLOSED_OPERATIONS.items()):
        try:
            op(cache)
        except CacheClosedError:
            continue
        not_raised.append(name)
    assert not_raised == []


def test_cache_closed_before_first_use_raises(idle: FleetCache) -> None:
    idle.close()
    with pytest.raises(CacheClosedError):
        idle.get("k")
    with pytest.raises(CacheClosedError):
        idle.set("k", 1)


def test_close_is_idempotent_and_context_manager_closes(make: Factory) -> None:
    cache = make()
    with cache as same:
        assert same is cache
        same.set("k", 1)
    with pytest.raises(CacheClosedError):
        cache.get("k")
    cache.close()
    assert issubclass(CacheClosedError, FleetCacheError)


def test_close_stops_the_listener_thread(make: Factory) -> None:
    cache = make()
    assert any(t.name == "fleetcache-invalidation" for t in threading.enumerate())
    before = sum(t.name == "fleetcache-invalidation" for t in threading.enumerate())
    cache.close()
    after = sum(t.name == "fleetcache-invalidation" for t in threading.enumerate())
    assert after == before - 1


def test_health(cache: FleetCache) -> None:
    cache.set("k", 1)
    health = cache.health()
    assert isinstance(health, Health)
    assert health.redis_ok is True
    assert health.redis_latency_ms is not None
    assert 0 <= health.redis_latency_ms < 1000
    assert health.bus_connected is True
    assert health.l1_size == 1
    assert health.pid == os.getpid()
    assert health.error is None
    assert health.ok is True


def test_bus_survives_its_watchdog_ping(make: Factory) -> None:
    # A PONG later than 0.15 s would mark the bus down (and count a reconnect) within 0.2 s.
    cache = make(health_check_interval=0.02, health_check_timeout=0.15)
    time.sleep(0.2)  # several PING/PONG rounds
    assert cache.health().bus_connected is True
    assert cache.stats().reconnects == 0


# -- environment and an unreachable Redis ----------------------------------------------------


@pytest.mark.parametrize("variable", ["FLEETCACHE_REDIS_URL", "REDIS_URL"])
def test_cache_without_config_uses_the_env_url(
    monkeypatch: pytest.MonkeyPatch, fake_url: str, raw: redis.Redis, namespace: str,
    variable: str,
) -> None:
    monkeypatch.delenv("FLEETCACHE_REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv(variable, fake_url)
    cache = FleetCache(namespace=namespace)
    try:
        cache.set("k", "v")
        assert raw.exists(l2_key(namespace, "k")) == 1
    finally:
        cache.close()


def test_unreachable_redis_degrades_reads_and_fails_writes() -> None:
    cache = FleetCache.from_url("redis://127.0.0.1:1/0", namespace="down")
    try:
        start = time.monotonic()
        assert cache.get("k", "dflt") == "dflt"
        assert cache.get_many(["k"]) == {}
        with pytest.raises(BackendUnavailableError) as info:
            cache.set("k", 1)
        assert isinstance(info.value, BackendError)
        assert isinstance(info.value.__cause__, redis.RedisError | OSError)
        health = cache.health()
        assert health.redis_ok is False
        assert health.redis_latency_ms is None
        assert health.error
        assert health.ok is False
        assert cache.stats().redis_errors >= 2
        assert time.monotonic() - start < 5
    finally:
        cache.close()
