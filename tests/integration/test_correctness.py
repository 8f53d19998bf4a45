"""The eleven defects of "Correctness first" (found on 1c91863), one test (or a few) each.

Each test failed there and states the behaviour now specified; README says the same.
Caches on one server stand for worker processes: each has its own L1, listener, flights
and lock tokens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fleetcache import (
    BackendAuthError,
    BackendError,
    ConfigError,
    CorruptValueError,
    FleetCache,
    InvalidArgumentError,
    InvalidKeyError,
    PoolExhaustedError,
    RecursiveComputeError,
    ValueEncodeError,
)
from fleetcache.flask_caching import FleetCacheBackend

from ..helpers import run_threads
from ..servers import Server, binaries
from ..waiting import wait_until

MakeCache = Callable[..., FleetCache]


def connected(make_cache: MakeCache, n: int, **options: Any) -> list[FleetCache]:
    caches = [make_cache(**options) for _ in range(n)]
    assert all(c.connect(wait=5.0) for c in caches)
    return caches


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- 1. a write during a compute revokes the fill ----------------------------------------


@pytest.mark.parametrize("write", ["delete", "invalidate", "clear", "set"])
def test_a_write_during_a_compute_is_not_undone_by_the_fill(
    make_cache: MakeCache, raw: redis.Redis, write: str
) -> None:
    a, b = connected(make_cache, 2)
    computing, written = threading.Event(), threading.Event()

    @a.cached(ttl=3600, key_prefix="price")
    def price() -> int:
        computing.set()
        assert written.wait(5)
        return 100  # read from the database before B's update

    thread, out = in_thread(price)
    assert computing.wait(5)
    if write == "delete":
        b.delete(price.key())
    elif write == "invalidate":
        b.cached(key_prefix="price")(lambda: 0).invalidate()
    elif write == "clear":
        b.clear()
    else:
        b.set(price.key(), 101)
    written.set()
    thread.join(5)
    assert out == [100]  # the caller still gets what it computed
    expected = 101 if write == "set" else None
    assert raw.exists(a.keys.value(price.key())) == (write == "set")
    fresh = make_cache()
    assert fresh.get(price.key()) == expected  # never the old 100, for the whole TTL
    assert a.stats().fills_revoked == 1


# -- 2. every reader gets what decoding the stored bytes gives ---------------------------


def test_the_writer_reads_what_every_other_process_reads(make_cache: MakeCache) -> None:
    a, b = connected(make_cache, 2)
    value: dict[str, Any] = {"pair": (1, 2), "tags": ["x"]}
    a.set("k", value)
    value["tags"].append("mutated after set")
    assert a.get("k") == b.get("k") == {"pair": [1, 2], "tags": ["x"]}
    assert type(a.get("k")["pair"]) is list
    assert a.get_or_compute("c", lambda: (1, 2)) == [1, 2]  # the computing caller too


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize("value", [
    dt.datetime(2026, 1, 1, 12, 0),  # naive: would read back as str
    dt.date(2026, 1, 1), dt.time(12, 0), uuid.UUID(int=1), decimal.Decimal("1.5"),
    Color.RED, Level.HIGH, {"nested": [Color.RED]},
])
def test_values_that_would_read_back_as_plain_str_or_int_are_refused(
    make_cache: MakeCache, raw: redis.Redis, value: Any
) -> None:
    (a,) = connected(make_cache, 1)
    with pytest.raises(ValueEncodeError, match="would read back as"):
        a.set("k", value)
    assert not raw.exists(a.keys.value("k"))
    aware = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    a.set("when", aware)
    assert make_cache().get("when") == aware  # aware datetimes round-trip


def test_strict_types_refuses_what_would_read_back_as_another_container(
    make_cache: MakeCache,
) -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    (strict,) = connected(make_cache, 1, strict_types=True)
    for value in [(1, 2), {1, 2}, Point(1), {"p": (1,)}]:
        with pytest.raises(ValueEncodeError, match="strict_types"):
            strict.set("k", value)
    strict.set("k", {"ok": [1, 2.5, None, b"x"]})


def test_a_view_returning_a_tuple_renders_the_same_in_every_worker(server: Server) -> None:
    """Flask-Caching caches a view's return value; a tuple would come back as a JSON list
    with status 200 in the other workers. The backend refuses it (strict_types), so
    Flask-Caching logs and serves the view uncached: 201 everywhere."""
    from flask import Flask
    from flask_caching import Cache

    namespace = "t" + uuid.uuid4().hex[:12]
    apps = []
    for _ in range(2):  # two "workers"
        app = Flask("worker")
        app.config.update(CACHE_TYPE="fleetcache.flask_caching.FleetCacheBackend",
                          CACHE_REDIS_URL=server.url, CACHE_KEY_PREFIX=namespace)
        cache = Cache(app)

        @app.get("/made")
        @cache.cached(timeout=60)
        def made() -> Any:
            return "hello", 201, {"X-Custom": "1"}

        apps.append((app, cache))
    try:
        for app, _ in apps:
            response = app.test_client().get("/made")
            assert (response.status_code, response.data, response.headers["X-Custom"]) == (
                201, b"hello", "1")
    finally:
        for _, cache in apps:
            cache.cache.close()


# -- 3. counters are atomic and never reset ----------------------------------------------


def test_inc_is_atomic_across_processes(server: Server) -> None:
    namespace = "t" + uuid.uuid4().hex[:12]
    backends = [FleetCacheBackend(url=server.url, namespace=namespace) for _ in range(3)]
    try:
        run_threads([threading.Thread(target=lambda b=b: [b.inc("n") for _ in range(50)])
                     for b in backends for _ in range(2)], 30)
        # every increment landed (an L1 may hear of the last one a moment later)
        assert wait_until(lambda: backends[0].get("n") == 300)
        assert backends[1].cache.incr("n", -300) == 0
    finally:
        for backend in backends:
            backend.close()


def test_inc_raises_when_redis_cannot_be_read_instead_of_restarting_at_one(
    own_server: Server,
) -> None:
    backend = FleetCacheBackend(url=own_server.url, namespace="inc")
    try:
        assert backend.inc("n", 41) == 41
        own_server.pause()  # reads time out
        try:
            with pytest.raises(BackendError):
                backend.inc("n")
        finally:
            own_server.resume()
        assert wait_until(backend.cache.connect, 5.0)
        assert backend.inc("n") == 42
        with pytest.raises(InvalidArgumentError, match="not an int"):
            backend.cache.set("s", "text")
            backend.inc("s")
    finally:
        backend.close()


# -- 4. a fill after a vanished value reaches every L1 ----------------------------------


@pytest.mark.parametrize("fill", ["get_or_compute", "add"])
def test_a_fill_after_an_external_flush_replaces_other_workers_copies(
    make_cache: MakeCache, raw: redis.Redis, fill: str
) -> None:
    a, b, c = connected(make_cache, 3)
    a.set("k", "old")
    assert b.get("k") == "old" and b.get("k") == "old"  # now in B's L1 (and A's)
    raw.delete(a.keys.value("k"))  # FLUSHDB or an eviction: no notice
    if fill == "add":
        assert c.add("k", "new")
    else:
        assert c.get_or_compute("k", lambda: "new") == "new"
    for holder in (a, b):
        assert wait_until(lambda h=holder: h.get("k") == "new", 1.5), "an L1 kept the old value"


# -- 5. in-process waits are bounded, recursion is refused --------------------------------


def test_a_compute_asking_for_its_own_key_fails_at_once(make_cache: MakeCache) -> None:
    (cache,) = connected(make_cache, 1)
    started = time.monotonic()
    with pytest.raises(RecursiveComputeError, match="'k'"):
        cache.get_or_compute("k", lambda: cache.get_or_compute("k", lambda: 1))
    with pytest.raises(RecursiveComputeError):  # through another key
        cache.get_or_compute("a", lambda: cache.get_or_compute(
            "b", lambda: cache.get_or_compute("a", lambda: 1)))
    assert time.monotonic() - started < 1.0
    assert cache.get_or_compute("k", lambda: 2) == 2  # nothing left locked


def test_two_computes_needing_each_others_keys_finish_within_lock_timeout(
    make_cache: MakeCache,
) -> None:
    (cache,) = connected(make_cache, 1, lock_timeout=1.0)
    both = threading.Barrier(2)

    def needs(other: str) -> Callable[[], str]:
        def compute() -> str:
            both.wait(5)
            return str(cache.get_or_compute(other, lambda: other))
        return compute

    started = time.monotonic()
    t1, out1 = in_thread(lambda: cache.get_or_compute("A", needs("B")))
    t2, out2 = in_thread(lambda: cache.get_or_compute("B", needs("A")))
    t1.join(10)
    t2.join(10)
    assert (out1, out2) == (["B"], ["A"])
    assert time.monotonic() - started < 1.0 + 1.0


def test_a_second_thread_waits_at_most_lock_timeout(make_cache: MakeCache) -> None:
    (cache,) = connected(make_cache, 1, lock_timeout=1.0)
    slow_started = threading.Event()

    def slow() -> str:
        slow_started.set()
        time.sleep(3.0)
        return "slow"

    holder, _ = in_thread(lambda: cache.get_or_compute("k", slow))
    assert slow_started.wait(5)
    started = time.monotonic()
    assert cache.get_or_compute("k", lambda: "own") == "own"
    assert 0.9 < time.monotonic() - started < 1.0 + 0.5
    holder.join(5)


# -- 7. an unencodable computed value is not recomputed forever ---------------------------


def test_an_unencodable_computed_value_is_computed_once_and_kept_in_l1(
    make_cache: MakeCache, raw: redis.Redis
) -> None:
    (cache,) = connected(make_cache, 1)
    calls: list[int] = []

    def huge() -> int:
        calls.append(1)
        return 2**70  # beyond MessagePack's 64 bits

    assert [cache.get_or_compute("k", huge) for _ in range(3)] == [2**70] * 3
    assert calls == [1]
    assert not raw.exists(cache.keys.value("k"))
    assert cache.stats().uncacheable_values == 1


# -- 8. @cached keys ---------------------------------------------------------------------


def test_cached_works_on_methods(make_cache: MakeCache) -> None:
    (cache,) = connected(make_cache, 1)

    class Repo:
        calls = 0

        @cache.cached(ttl=60, key_prefix="repo.total")
        def total(self, n: int) -> int:
            Repo.calls += 1
            return n * 10

    assert Repo().total(2) == Repo().total(2) == 20
    assert Repo.calls == 1
    assert Repo().total.invalidate(2) is True


def test_cached_refuses_lambdas_and_closures_without_a_prefix(make_cache: MakeCache) -> None:
    cache = make_cache()

    def make(step: int) -> Callable[[int], int]:
        def apply(x: int) -> int:
            return x + step
        return apply

    with pytest.raises(InvalidArgumentError, match="lambda"):
        cache.cached(ttl=60)(lambda x: x)
    with pytest.raises(InvalidArgumentError, match="closure"):
        cache.cached(ttl=60)(make(1))
    inc = cache.cached(ttl=60, key_prefix="inc")(make(1))
    dbl = cache.cached(ttl=60, key_prefix="dbl")(lambda x: x * 2)
    assert (inc(5), dbl(5)) == (6, 10)


def test_cached_arguments_of_different_types_are_different_keys(make_cache: MakeCache) -> None:
    cache = make_cache()

    @cache.cached(ttl=60, key_prefix="f")
    def f(arg: Any) -> Any:
        return arg

    keys = {f.key(arg) for arg in [(1, 2), [1, 2], {1, 2}, Color.RED, "red", 1, True, 1.0]}
    assert len(keys) == 8
    assert f.key({1: "a", 2: "b"}) == f.key({2: "b", 1: "a"})  # int keys, any order


# -- 9. the pool: a minimum, and exhaustion named as such -------------------------------


@pytest.mark.parametrize("size", [1, 2, 3])
def test_too_small_a_pool_is_refused(size: int) -> None:
    with pytest.raises(ConfigError, match="max_connections must be at least 4"):
        FleetCache(url="redis://127.0.0.1:1/0", max_connections=size)


def test_pool_exhaustion_is_not_reported_as_an_outage(make_cache: MakeCache) -> None:
    (cache,) = connected(make_cache, 1, max_connections=4, pool_timeout=0.2)
    cache.set("k", "v")  # works with the smallest pool
    outcomes: list[Any] = []

    def block() -> None:
        try:
            outcomes.append(cache.read_stream("s", block_ms=1500))
        except BackendError as exc:
            outcomes.append(exc)

    run_threads([threading.Thread(target=block) for _ in range(6)], 10)
    errors = [o for o in outcomes if isinstance(o, BackendError)]
    assert errors and all(type(e) is PoolExhaustedError for e in errors), outcomes
    assert "unreachable" not in str(errors[0])
    assert outcomes.count([]) == 6 - len(errors)  # the others waited their block_ms


# -- 10. errors are ours -------------------------------------------------------------


def test_a_key_that_is_not_utf8_text_is_an_invalid_key(make_cache: MakeCache) -> None:
    cache = make_cache()
    for call in (lambda: cache.get("\ud800"), lambda: cache.get_many(["ok", "\ud800"]),
                 lambda: cache.set("\ud800", 1), lambda: cache.delete("\ud800")):
        with pytest.raises(InvalidKeyError, match="UTF-8"):
            call()


@pytest.mark.parametrize("url", [
    "redis://:pw@[::1/0",  # an unclosed IPv6 bracket
    "redis://127.0.0.1:6379/0?db=abc",
    "redis://127.0.0.1:6379/abc",
    "unix:///tmp/redis.sock?db=x",
])
def test_malformed_urls_are_refused_at_construction(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        FleetCache(url=url)
    assert "pw" not in str(info.value)


def test_retries_must_be_a_number() -> None:
    with pytest.raises(ConfigError, match="retries"):
        FleetCache(url="redis://127.0.0.1:1/0", retries=True)


def test_a_wrong_password_is_not_reported_as_unreachable() -> None:
    server = Server(binaries()[sorted(binaries())[0]],
                    extra=("--requirepass", "right")).start()
    try:
        cache = FleetCache(url=f"redis://:wrong@127.0.0.1:{server.port}/0", namespace="auth")
        with pytest.raises(BackendAuthError) as info:
            cache.set("k", 1)
        assert "unreachable" not in str(info.value) and "wrong" not in str(info.value)
        cache.close()
    finally:
        server.stop()


def test_a_foreign_non_utf8_stream_field_is_a_corrupt_value(
    make_cache: MakeCache, raw: redis.Redis
) -> None:
    cache = make_cache()
    raw.xadd(cache.keys.stream("events"), {b"field": b"\xff\xfe"})
    with pytest.raises(CorruptValueError, match="not UTF-8"):
        cache.read_stream_latest("events")


def test_lane_errors_do_not_carry_an_empty_pop_as_context(own_server: Server) -> None:
    cache = FleetCache(url=own_server.url, namespace="lane", connect_timeout=0.2)
    try:
        cache.set("k", 1)
        own_server.kill()
        with pytest.raises(BackendError) as info:
            cache.set("k", 2)
        chain: list[BaseException] = []
        exc: BaseException | None = info.value
        while exc is not None and len(chain) < 10:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        assert not any(isinstance(e, IndexError) for e in chain), chain
    finally:
        cache.close()


# -- 11. no surprises in bulk calls and streams ------------------------------------------


def test_bulk_calls_refuse_a_lone_str_and_take_any_iterable(make_cache: MakeCache) -> None:
    (cache,) = connected(make_cache, 1)
    cache.set_many({"a": 1, "b": 2})
    with pytest.raises(InvalidArgumentError, match="not a single str"):
        cache.get_many("abc")
    with pytest.raises(InvalidArgumentError, match="not a single str"):
        cache.delete_many("ab")
    assert cache.get_many(k for k in ["a", "b"]) == {"a": 1, "b": 2}
    assert cache.delete_many(iter(["a", "b"])) == 2


def test_duplicate_stream_fields_are_refused(make_cache: MakeCache) -> None:
    cache = make_cache()
    with pytest.raises(InvalidArgumentError, match="given twice"):
        cache.publish_to_stream("s", [("f", "1"), ("f", "2")])
