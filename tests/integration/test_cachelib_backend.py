"""fleetcache.flask_caching.FleetCacheBackend: cachelib's contract and Flask-Caching end to end.

``TestCommon`` ports cachelib's own ``CommonTests``/``ClearTests``/``HasTests`` (tests/common.py,
clear.py, has.py at cachelib 0.17) with their sample data; the rest covers what fleetcache adds
or changes: timeout=0, namespaces, raising writes, and ``Cache(app)`` built from
``CACHE_TYPE``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import cachelib
import pytest
import redis
from flask import Flask
from flask_caching import Cache

from fleetcache import (
    BackendError,
    ConfigError,
    InvalidArgumentError,
    ValueEncodeError,
)
from fleetcache.flask_caching import NO_EXPIRY_SECONDS, FleetCacheBackend

from ..helpers import closing_all, run_threads
from ..servers import DEAD_URL, Server, free_port

pytestmark = pytest.mark.usefixtures("no_url_env")

CACHE_TYPE = "fleetcache.flask_caching.FleetCacheBackend"

MakeBackend = Callable[..., FleetCacheBackend]


@pytest.fixture
def make_backend(server: Server, namespace: str) -> Iterator[MakeBackend]:
    with closing_all() as keep:

        def factory(*args: Any, **options: Any) -> FleetCacheBackend:
            options.setdefault("url", server.url)
            options.setdefault("namespace", namespace)
            return keep(FleetCacheBackend(*args, **options))

        yield factory


class TestCommon:
    """cachelib's common suite, unchanged except for sleeping 1.2 s instead of 4."""

    sample_numbers: ClassVar[list[int]] = [0, 10, 1024000, 9, 5000000000000, 99, 738, 2000000]
    sample_pairs: ClassVar[dict[str, Any]] = {
        "128": False,
        "beef": True,
        "crevettes": {},
        "1024": "spam",
        "bacon": "eggs",
        "sausage": 2048,
        "3072": [],
        "brandy": [{}, "fried eggs"],
        "lobster": ["baked beans", [512]],
        "4096": {"sauce": [], 256: "truffle"},
    }

    @pytest.fixture(autouse=True)
    def _factory(self, make_backend: MakeBackend) -> None:
        self.cache_factory = make_backend

    def test_set_get(self) -> None:
        cache = self.cache_factory()
        for k, v in self.sample_pairs.items():
            assert cache.set(k, v)
            assert cache.get(k) == v

    def test_set_get_many(self) -> None:
        cache = self.cache_factory()
        result = cache.set_many(self.sample_pairs)
        assert result == list(self.sample_pairs.keys())
        values = cache.get_many(*self.sample_pairs)
        assert values == list(self.sample_pairs.values())

    def test_get_dict(self) -> None:
        cache = self.cache_factory()
        cache.set_many(self.sample_pairs)
        d = cache.get_dict(*self.sample_pairs)
        assert d == self.sample_pairs

    def test_delete(self) -> None:
        cache = self.cache_factory()
        for k, v in self.sample_pairs.items():
            cache.set(k, v)
            assert cache.delete(k)
            assert not cache.get(k)

    def test_delete_many(self) -> None:
        cache = self.cache_factory()
        cache.set_many(self.sample_pairs)
        result = cache.delete_many(*self.sample_pairs)
        assert result == list(self.sample_pairs.keys())
        assert not any(cache.get_many(*self.sample_pairs))

    def test_delete_many_ignore_errors(self) -> None:
        cache = self.cache_factory()
        cache.set("bacon", "spam")
        cache.delete_many("eggs", "bacon")
        assert cache.get("bacon") is None

    def test_add(self) -> None:
        cache = self.cache_factory()
        cache.set_many(self.sample_pairs)
        for k in self.sample_pairs:
            assert not cache.add(k, "updated")
        assert cache.get_many(*self.sample_pairs) == list(self.sample_pairs.values())
        for k, v in self.sample_pairs.items():
            assert cache.add(f"{k}-new", v)
            assert cache.get(f"{k}-new") == v

    def test_inc_dec(self) -> None:
        cache = self.cache_factory()
        for n in self.sample_numbers:
            assert not cache.get(f"{n}-key-inc")
            assert cache.inc(f"{n}-key-inc", n) == n
            assert cache.get(f"{n}-key-inc") == n
            assert cache.dec(f"{n}-key-dec", n) == -n
            assert cache.get(f"{n}-key-dec") == -n
            assert cache.dec(f"{n}-key-inc", 5) == n - 5

    def test_expiration(self) -> None:
        cache = self.cache_factory()
        for k, v in self.sample_pairs.items():
            cache.set(f"{k}-t0", v, timeout=0)
            cache.set(f"{k}-t1", v, timeout=1)
        time.sleep(1.2)
        for k, v in self.sample_pairs.items():
            assert cache.get(f"{k}-t0") == v
            assert not cache.get(f"{k}-t1")

    def test_clear(self) -> None:
        cache = self.cache_factory()
        assert cache.set_many(self.sample_pairs)
        assert cache.clear()
        assert not any(cache.get_many(*self.sample_pairs))

    def test_has(self) -> None:
        cache = self.cache_factory()
        assert cache.set_many(self.sample_pairs)
        for k in self.sample_pairs:
            assert cache.has(k)
        assert not cache.has("unknown")


# -- cachelib contract details --------------------------------------------------------------


def test_is_a_cachelib_cache_with_cachelibs_constructor(make_backend: MakeBackend) -> None:
    backend = make_backend(42, False)
    assert isinstance(backend, cachelib.BaseCache)
    assert (backend.default_timeout, backend.ignore_delete_many_errors) == (42, False)
    defaults = make_backend()
    assert (defaults.default_timeout, defaults.ignore_delete_many_errors) == (300, True)
    assert make_backend(default_timeout=dt.timedelta(minutes=2)).default_timeout == 120


def test_fleetcache_options_reach_the_cache(make_backend: MakeBackend, server: Server) -> None:
    backend = make_backend(namespace="nsx", l1_capacity=7, lock_timeout=2)
    config = backend.cache.config
    assert (config.url, config.namespace, config.l1_capacity, config.lock_timeout) == (
        server.url, "nsx", 7, 2.0)
    with pytest.raises(ConfigError, match="l1_capcity"):
        FleetCacheBackend(url=DEAD_URL, l1_capcity=7)
    with pytest.raises(ConfigError):
        FleetCacheBackend(-1, url=DEAD_URL)


def test_timeouts_map_to_l2_ttls(
    make_backend: MakeBackend, raw: redis.Redis, namespace: str,
) -> None:
    backend = make_backend(default_timeout=50)
    backend.set("default", 1)
    backend.set("explicit", 1, timeout=20)
    backend.set("delta", 1, timeout=dt.timedelta(seconds=30))
    backend.set("forever", 1, timeout=0)
    ttl = {k: raw.pttl(f"{namespace}:v:{k}") / 1000 for k in
           ("default", "explicit", "delta", "forever")}
    assert 45 < ttl["default"] <= 50
    assert 15 < ttl["explicit"] <= 20
    assert 25 < ttl["delta"] <= 30
    assert NO_EXPIRY_SECONDS - 60 < ttl["forever"] <= NO_EXPIRY_SECONDS
    with pytest.raises(InvalidArgumentError):
        backend.set("negative", 1, timeout=-1)
    assert not raw.exists(f"{namespace}:v:negative")


def test_default_timeout_zero_means_no_expiry(
    make_backend: MakeBackend, raw: redis.Redis, namespace: str,
) -> None:
    backend = make_backend(default_timeout=0)
    backend.set("k", "v")
    backend.add("a", "v")
    backend.inc("n")
    for key in ("k", "a", "n"):
        assert raw.pttl(f"{namespace}:v:{key}") / 1000 > NO_EXPIRY_SECONDS - 60


def test_get_misses_are_none_and_a_cached_none_is_present(make_backend: MakeBackend) -> None:
    backend = make_backend()
    assert backend.get("missing") is None
    assert backend.get_many("missing", "also") == [None, None]
    backend.set("nothing", None)
    assert backend.get("nothing") is None
    assert backend.has("nothing")
    assert not backend.add("nothing", "something")


def test_delete_reports_whether_the_key_existed(make_backend: MakeBackend) -> None:
    backend = make_backend()
    backend.set("k", 1)
    assert backend.delete("k")
    assert not backend.delete("k")
    assert backend.delete_many("k", "never") == ["k", "never"]


def test_add_is_atomic_across_caches(make_backend: MakeBackend) -> None:
    """Two backends (own pools, listeners and in-process locks, like two workers) race."""
    backends = [make_backend(), make_backend()]
    for backend in backends:
        assert backend.cache.connect(wait=5.0)
    for round_ in range(5):
        key = f"once-{round_}"
        results: list[tuple[int, bool]] = []
        start = threading.Barrier(8)

        def attempt(n: int, key: str = key, results: list[tuple[int, bool]] = results,
                    start: threading.Barrier = start) -> None:
            start.wait()
            results.append((n, backends[n % 2].add(key, n)))

        run_threads([threading.Thread(target=attempt, args=(n,)) for n in range(8)], 10)
        winners = [n for n, added in results if added]
        assert len(results) == 8
        assert len(winners) == 1, results
        assert backends[0].get(key) == backends[1].get(key) == winners[0]


def test_inc_is_atomic_within_a_process(make_backend: MakeBackend) -> None:
    backend = make_backend()
    start = threading.Barrier(8)

    def bump() -> None:
        start.wait()
        for _ in range(25):
            backend.inc("hits")

    run_threads([threading.Thread(target=bump) for _ in range(8)], 30)
    assert backend.get("hits") == 200


def test_inc_is_seen_by_another_cache_and_refuses_non_ints(make_backend: MakeBackend) -> None:
    a, b = make_backend(), make_backend()
    assert a.inc("n", 5) == 5
    assert b.inc("n", 2) == 7
    assert a.cache.connect(wait=5.0)
    deadline = time.monotonic() + 2
    while a.get("n") != 7 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert a.dec("n") == 6
    a.set("s", "text")
    with pytest.raises(InvalidArgumentError, match="str"):
        a.inc("s")
    a.set("flag", True)
    with pytest.raises(InvalidArgumentError, match="bool"):
        a.inc("flag")
    assert a.get("s") == "text"


def test_unencodable_values_raise_and_write_nothing(
    make_backend: MakeBackend, raw: redis.Redis, namespace: str,
) -> None:
    backend = make_backend()
    with pytest.raises(ValueEncodeError):
        backend.set("obj", object())
    with pytest.raises(TypeError):  # ValueEncodeError is a TypeError, as cachelib expects
        backend.add("obj", [1j])
    assert not raw.exists(f"{namespace}:v:obj")
    assert backend.get("obj") is None


def test_clear_on_namespace_a_leaves_namespace_b_intact(
    make_backend: MakeBackend, namespace: str,
) -> None:
    a = make_backend(namespace=namespace + "-a")
    b = make_backend(namespace=namespace + "-b")
    prefix_of_a = make_backend(namespace=namespace)  # "ns" is a prefix of "ns-a": no overlap
    a.set_many({"k1": 1, "k2": 2})
    b.set_many({"k1": "b1", "k2": "b2"})
    prefix_of_a.set("k1", "p1")
    assert b.cache.connect(wait=5.0)
    assert a.clear()
    assert a.get_many("k1", "k2") == [None, None]
    assert b.get_many("k1", "k2") == ["b1", "b2"]
    assert prefix_of_a.get("k1") == "p1"
    fresh_b = make_backend(namespace=namespace + "-b")  # cold L1: reads L2
    assert fresh_b.get_many("k1", "k2") == ["b1", "b2"]


def test_writes_raise_and_reads_miss_when_redis_is_unreachable() -> None:
    backend = FleetCacheBackend(url=f"redis://127.0.0.1:{free_port()}/0", namespace="down")
    try:
        assert backend.get("k") is None
        assert backend.get_many("k") == [None]
        assert not backend.has("k")
        writes: list[Callable[[], object]] = [
            lambda: backend.set("k", 1), lambda: backend.add("k", 1),
            lambda: backend.inc("k"), lambda: backend.delete("k"), backend.clear,
        ]
        for write in writes:
            with pytest.raises(BackendError):
                write()
        assert backend.get("k") is None  # the failed add left nothing in this worker's L1
        assert backend.delete_many("a", "b") == []
        strict = FleetCacheBackend(url=backend.cache.config.url, namespace="down",
                                   ignore_delete_many_errors=False)
        try:
            with pytest.raises(RuntimeError, match="Failed to delete") as info:
                strict.delete_many("a", "b")
            assert isinstance(info.value.__cause__, BackendError)
        finally:
            strict.close()
    finally:
        backend.close()


# -- Flask-Caching --------------------------------------------------------------------------


@pytest.fixture
def make_cache(server: Server, namespace: str) -> Iterator[Callable[..., Cache]]:
    """``Cache(app)`` with CACHE_TYPE pointing here; backends closed after the test."""
    made: list[tuple[Cache, Flask]] = []

    def factory(**config: Any) -> Cache:
        app = Flask(f"app{len(made)}")
        app.config.update(CACHE_TYPE=CACHE_TYPE, CACHE_REDIS_URL=server.url,
                          CACHE_KEY_PREFIX=namespace)
        app.config.update(config)
        cache = Cache(app)
        made.append((cache, app))
        return cache

    yield factory
    for cache, app in made:
        app.extensions["cache"][cache].close()


def backend_of(cache: Cache) -> FleetCacheBackend:
    backend = cache.cache
    assert isinstance(backend, FleetCacheBackend)
    return backend


def test_cache_type_path_is_built_through_factory_with_the_cache_settings(
    make_cache: Callable[..., Cache], server: Server, namespace: str,
) -> None:
    # A path containing "cachelib" would bypass factory() and drop the CACHE_* settings.
    assert "cachelib" not in CACHE_TYPE
    cache = make_cache(CACHE_DEFAULT_TIMEOUT=77, CACHE_IGNORE_ERRORS=True,
                       CACHE_OPTIONS={"l1_capacity": 9, "l1_ttl": 5})
    backend = backend_of(cache)
    config = backend.cache.config
    assert (config.url, config.namespace, config.l1_capacity, config.l1_ttl) == (
        server.url, namespace, 9, 5.0)
    assert (backend.default_timeout, backend.ignore_delete_many_errors) == (77, True)
    assert not backend_of(make_cache()).ignore_delete_many_errors  # Flask-Caching's default


def test_cache_options_win_over_the_generic_settings(
    make_cache: Callable[..., Cache], server: Server, namespace: str,
) -> None:
    cache = make_cache(CACHE_REDIS_URL=DEAD_URL, CACHE_KEY_PREFIX="ignored",
                       CACHE_OPTIONS={"url": server.url, "namespace": namespace + "x"})
    config = backend_of(cache).cache.config
    assert (config.url, config.namespace) == (server.url, namespace + "x")


def test_redis_host_port_db_build_the_url(
    make_cache: Callable[..., Cache], server: Server, raw: redis.Redis, namespace: str,
) -> None:
    cache = make_cache(CACHE_REDIS_URL=None, CACHE_REDIS_HOST="127.0.0.1",
                       CACHE_REDIS_PORT=server.port, CACHE_REDIS_DB=0)
    assert backend_of(cache).cache.config.url == f"redis://127.0.0.1:{server.port}/0"
    cache.set("k", "v")
    assert raw.exists(f"{namespace}:v:k")


def test_without_a_url_the_environment_is_read(
    make_cache: Callable[..., Cache], server: Server, raw: redis.Redis, namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", server.url)
    cache = make_cache(CACHE_REDIS_URL=None)
    cache.set("k", "v")
    assert raw.exists(f"{namespace}:v:k")


def test_a_key_prefix_that_is_no_namespace_is_refused_at_startup(
    make_cache: Callable[..., Cache],
) -> None:
    with pytest.raises(ConfigError, match="CACHE_KEY_PREFIX"):
        make_cache(CACHE_KEY_PREFIX="shop/eu")


def test_a_key_prefix_ending_in_a_colon_names_the_namespace_without_it(
    make_cache: Callable[..., Cache],
) -> None:
    """cachelib users write ``"shop:"``; fleetcache adds its own separators."""
    assert backend_of(make_cache(CACHE_KEY_PREFIX="shop:")).cache.config.namespace == "shop"


def test_cachelibs_key_prefix_keyword_is_the_namespace(server: Server) -> None:
    """``cachelib.RedisCache(key_prefix=...)`` spelling; not together with namespace=."""
    backend = FleetCacheBackend(url=server.url, key_prefix="test_prefix:")
    try:
        assert backend.cache.config.namespace == "test_prefix"
        with pytest.raises(ConfigError, match="not both"):
            FleetCacheBackend(url=server.url, key_prefix="a", namespace="b")
    finally:
        backend.close()


def test_flask_cachings_default_key_prefix_becomes_the_namespace(server: Server) -> None:
    app = Flask("default-prefix")
    app.config.update(CACHE_TYPE=CACHE_TYPE, CACHE_REDIS_URL=server.url)
    cache = Cache(app)
    try:
        assert backend_of(cache).cache.config.namespace == "flask_cache_"
    finally:
        backend_of(cache).close()
    app = Flask("no-prefix")
    app.config.update(CACHE_TYPE=CACHE_TYPE, CACHE_REDIS_URL=server.url, CACHE_KEY_PREFIX=None)
    cache = Cache(app)
    try:
        assert backend_of(cache).cache.config.namespace == "fleetcache"
    finally:
        backend_of(cache).close()


def test_memoize_and_delete_memoized_end_to_end(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    calls: list[int] = []

    @cache.memoize(timeout=60)
    def square(n: int) -> dict[str, int]:
        calls.append(n)
        return {"n": n, "square": n * n}

    assert square(3) == {"n": 3, "square": 9}
    assert square(3) == {"n": 3, "square": 9}
    assert square(4) == {"n": 4, "square": 16}
    assert calls == [3, 4]

    cache.delete_memoized(square, 3)  # one call's entry
    assert square(3)["square"] == 9
    assert square(4)["square"] == 16
    assert calls == [3, 4, 3]

    cache.delete_memoized(square)  # every entry: a new version hash
    square(3)
    square(4)
    assert calls == [3, 4, 3, 3, 4]


def test_memoized_value_is_shared_with_another_worker(make_cache: Callable[..., Cache]) -> None:
    calls: list[str] = []

    def define(cache: Cache) -> Any:
        @cache.memoize(timeout=60)
        def greet(name: str) -> str:
            calls.append(name)
            return f"hello {name}"

        return greet

    first, second = make_cache(), make_cache()  # two FleetCaches: two "workers"
    assert backend_of(second).cache.connect(wait=5.0)
    greet_a, greet_b = define(first), define(second)
    assert greet_a("bob") == greet_b("bob") == "hello bob"
    assert calls == ["bob"]
    first.delete_memoized(greet_a)
    deadline = time.monotonic() + 2
    while calls == ["bob"] and time.monotonic() < deadline:  # until B hears of the reset
        assert greet_b("bob") == "hello bob"
        time.sleep(0.01)
    assert calls == ["bob", "bob"]


def test_cached_view_through_flask_caching(make_cache: Callable[..., Cache]) -> None:
    cache = make_cache()
    app = cache.app
    calls: list[int] = []

    @app.get("/hello")
    @cache.cached(timeout=60)
    def hello() -> str:
        calls.append(1)
        return f"hello {len(calls)}"

    client = app.test_client()
    assert client.get("/hello").data == b"hello 1"
    assert client.get("/hello").data == b"hello 1"
    assert len(calls) == 1
    cache.clear()
    assert client.get("/hello").data == b"hello 2"
