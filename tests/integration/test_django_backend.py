"""The Django backend against a real server: what Django's own suite (tests/peers) does not
check. The import path, the process-wide shared FleetCache, OPTIONS validation, MessagePack
for plain values and signed pickles for the rest, forged values never reaching
``pickle.loads``, Django's timeout rules, atomic incr, touch, single-flight get_or_set, and
invalidation between two "workers" (two FleetCaches on one namespace).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import redis
from django.conf import settings

if not settings.configured:  # this process has no Django project: a minimal one
    settings.configure(SECRET_KEY="fleetcache-tests-django-secret-key", USE_TZ=True)

from django.core.cache import CacheHandler, CacheKeyWarning
from django.test import override_settings
from django.utils.crypto import salted_hmac

from fleetcache import (
    BackendUnavailableError,
    ConfigError,
    FleetCache,
    InvalidArgumentError,
    ValueTypeError,
)
from fleetcache.core.codec import Codec
from fleetcache.django import NO_EXPIRY_SECONDS, FleetCacheBackend, close_shared_caches
from fleetcache.testing import l1_entry

from ..servers import DEAD_URL, Server
from ..waiting import wait_until

BACKEND = "fleetcache.django.FleetCacheBackend"
SALT = "fleetcache.integrations.django.FleetCacheBackend"

Make = Callable[..., FleetCacheBackend]


@pytest.fixture(autouse=True)
def _close_shared() -> Iterator[None]:
    yield
    close_shared_caches()


@pytest.fixture
def make(server: Server, namespace: str) -> Make:
    """``make(**CACHES entry)``: a backend built the way Django builds one, on the shared
    server in this test's namespace (``OPTIONS`` merged over that)."""

    def factory(location: str | None = None, **params: Any) -> FleetCacheBackend:
        options = {"namespace": namespace, **params.pop("OPTIONS", {})}
        entry = {"BACKEND": BACKEND, "LOCATION": server.url if location is None else location,
                 "OPTIONS": options, **params}
        backend = CacheHandler({"default": entry})["default"]
        assert isinstance(backend, FleetCacheBackend)
        return backend

    return factory


@pytest.fixture
def backend(make: Make) -> FleetCacheBackend:
    b = make()
    assert b.cache.connect(wait=5.0)
    return b


@pytest.fixture
def workers(make: Make) -> tuple[FleetCacheBackend, FleetCacheBackend]:
    """Two backends on one namespace with their own FleetCache (OPTIONS differ), as two
    workers of a fleet are: their own L1s, told of each other's writes by pub/sub."""
    a, b = make(OPTIONS={"l1_capacity": 1000}), make(OPTIONS={"l1_capacity": 1001})
    assert a.cache is not b.cache
    assert a.cache.connect(wait=5.0) and b.cache.connect(wait=5.0)
    return a, b


def stored_bytes(raw: redis.Redis, backend: FleetCacheBackend, key: str) -> bytes | None:
    value: bytes | None = raw.get(backend.cache.keys.value(backend.make_key(key)))
    return value


def decoded(raw: redis.Redis, backend: FleetCacheBackend, key: str) -> Any:
    """What the core envelope under ``key`` holds (its signature checked)."""
    blob = stored_bytes(raw, backend, key)
    assert blob is not None
    codec = Codec(1 << 24, backend.cache.config.signing_key_bytes)
    return codec.decode(blob, backend.make_key(key))[0]


# -- wiring ------------------------------------------------------------------------------

def test_backends_of_one_process_share_one_fleetcache(make: Make) -> None:
    """Per thread and per alias Django builds a backend; they must not each get an L1, a
    listener and a pool, nor serve each other's writes stale."""
    a, v2 = make(), make(VERSION=2, KEY_PREFIX="x", TIMEOUT=10)
    found: list[FleetCache] = []
    thread = threading.Thread(target=lambda: found.append(make().cache))
    thread.start()
    thread.join(10)
    assert a.cache is v2.cache is found[0]
    assert make(OPTIONS={"l1_ttl": 5.0}).cache is not a.cache
    a.set("k", 1, version=2)
    assert v2.get("k") is None  # same version, another KEY_PREFIX: another key
    v2.set("shared", "v2 wrote", version=1)
    assert make(KEY_PREFIX="x").get("shared") == "v2 wrote"  # no stale L1 in between


def test_close_is_a_no_op_and_close_shared_caches_really_closes(make: Make) -> None:
    backend = make()
    backend.set("k", "v")
    backend.close()  # Django calls this after every request
    assert backend.get("k") == "v"
    cache = backend.cache
    close_shared_caches()
    assert make().cache is not cache  # a fresh one for backends built afterwards


def test_options_are_fleetcache_settings_and_validated(make: Make) -> None:
    backend = make(OPTIONS={"l1_capacity": 77, "lock_timeout": 3.0})
    assert backend.cache.config.l1_capacity == 77
    assert backend.cache.config.lock_timeout == 3.0
    with pytest.raises(ConfigError, match=r"unknown fleetcache settings \['MAX_ENTRIES'\]"):
        make(OPTIONS={"MAX_ENTRIES": 30})
    with pytest.raises(ConfigError, match="LOCATION"):
        make(OPTIONS={"url": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ConfigError, match="always signs"):
        make(OPTIONS={"signing_key": None})
    with pytest.raises(ConfigError, match="several servers"):
        make(location="redis://127.0.0.1:1/0,redis://127.0.0.1:2/0")
    with pytest.raises(ConfigError, match="several servers"):
        make(location=["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"])
    with pytest.raises(ConfigError, match="namespace"):
        make(OPTIONS={"namespace": "no spaces"})
    with pytest.raises(ConfigError, match="OPTIONS"):
        CacheHandler({"default": {"BACKEND": BACKEND, "OPTIONS": ["l1_ttl"]}})["default"]


def test_default_namespace_and_keys_as_django_makes_them(
    server: Server, raw: redis.Redis
) -> None:
    backend = CacheHandler({"default": {
        "BACKEND": BACKEND, "LOCATION": [server.url], "KEY_PREFIX": "shop", "VERSION": 3,
    }})["default"]
    assert backend.cache.config.namespace == "django"
    backend.set("cart", [1])
    assert raw.exists("django:v:shop:3:cart")
    custom = CacheHandler({"default": {
        "BACKEND": BACKEND, "LOCATION": server.url,
        "KEY_FUNCTION": lambda key, prefix, version: f"K/{key}/{version}",
    }})["default"]
    custom.set("cart", [2])
    assert raw.exists("django:v:K/cart/1")
    backend.clear()


def test_empty_location_reads_the_environment_on_first_use(
    server: Server, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = CacheHandler({"default": {"BACKEND": BACKEND,
                                        "OPTIONS": {"namespace": namespace}}})["default"]
    monkeypatch.setenv("FLEETCACHE_REDIS_URL", server.url)  # after the backend was built
    backend.set("k", "v")
    assert backend.cache.config.url == server.url
    assert backend.get("k") == "v"


def test_memcached_portability_warnings_are_raised(backend: FleetCacheBackend) -> None:
    with pytest.warns(CacheKeyWarning):
        backend.set("has space", 1)
    with pytest.warns(CacheKeyWarning):
        assert backend.get("has space") == 1


# -- values ------------------------------------------------------------------------------

def test_plain_values_stay_messagepack(backend: FleetCacheBackend, raw: redis.Redis) -> None:
    value = {"s": "é", "n": 2**64 - 1, "f": 1.5, "b": b"\x00", "l": [None, True], 3: {}}
    backend.set("plain", value)
    assert decoded(raw, backend, "plain") == value
    assert backend.get("plain") == value


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    def __repr__(self) -> str:
        return f"Point({self.x})"

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("value", [
    (1, 2), {1, 2}, frozenset({"a"}), [1, (2, 3)], {"k": {"t": (1,)}}, {(1, 2): "tuple key"},
    dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    dt.datetime(2024, 5, 1, 12), dt.date(2024, 5, 1), Decimal("1.10"), 2**70, -(2**64),
    "lone \ud800 surrogate", bytearray(b"ab"), Point(3), [Point(1)], ValueError("x"),
], ids=repr)
def test_anything_else_is_pickled_and_reads_back_exactly(
    backend: FleetCacheBackend, raw: redis.Redis, value: Any
) -> None:
    backend.set("v", value)
    stored = decoded(raw, backend, "v")
    assert type(stored) is msgspec.msgpack.Ext and stored.code == 80
    got = backend.get("v")
    assert type(got) is type(value)
    if isinstance(value, ValueError):
        assert got.args == value.args
    else:
        assert got == value
        if isinstance(value, dt.datetime):
            assert got.tzinfo == value.tzinfo
    assert repr(backend.get_many(["v"])) == repr({"v": got})


def test_every_read_returns_a_new_object(backend: FleetCacheBackend) -> None:
    backend.set("d", {"items": [1]})
    backend.set("p", Point(1))
    first = backend.get("d")
    first["items"].append(2)  # code that edits what it read...
    assert backend.get("d") == {"items": [1]}  # ...changes nothing for the next request
    assert backend.get_many(["d"])["d"] is not backend.get_many(["d"])["d"]
    assert backend.get("p") is not backend.get("p")


def test_unpicklable_values_raise_pickle_errors_and_write_nothing(
    backend: FleetCacheBackend
) -> None:
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        backend.set("f", lambda: 1)
    assert backend.get("f", "absent") == "absent"


# -- forged values -------------------------------------------------------------------------

EXPLOITED: list[str] = []


def exploited(how: str) -> None:
    EXPLOITED.append(how)


class Exploit:
    """Unpickling this calls :func:`exploited` (any code could run): it must never be
    unpickled from Redis."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exploited, ("ran",))


def test_a_writer_without_the_key_cannot_plant_anything(
    backend: FleetCacheBackend, raw: redis.Redis
) -> None:
    made = backend.make_key("session")
    evil = pickle.dumps(Exploit())
    unsigned = Codec(1 << 20)  # a well-formed envelope, as anyone with Redis access can make
    for planted in (unsigned.encode(made, msgspec.msgpack.Ext(80, b"\0" * 32 + evil), 2**62),
                    unsigned.encode(made, {"role": "admin"}, 2**62), evil):
        raw.set(backend.cache.keys.value(made), planted)
        assert backend.get("session", "miss") == "miss"
        assert not backend.has_key("session")
    assert EXPLOITED == []
    assert backend.cache.stats().corrupt_values >= 3


def test_a_valid_envelope_with_a_bad_pickle_mac_never_reaches_pickle(
    make: Make, raw: redis.Redis
) -> None:
    """The pickle carries its own HMAC: even a writer that holds the envelope key (another
    service given the same ``signing_key``) cannot make a worker unpickle its bytes."""
    secret = "shared-with-another-service-0123"
    backend = make(OPTIONS={"signing_key": secret})
    made = backend.make_key("session")
    signed = Codec(1 << 20, secret.encode())
    evil = pickle.dumps(Exploit())
    real = pickle.dumps(Point(1))
    forgeries = [
        msgspec.msgpack.Ext(80, b"\0" * 32 + evil),  # wrong MAC
        msgspec.msgpack.Ext(80, evil),  # no MAC at all
        msgspec.msgpack.Ext(7, evil),  # another extension
        msgspec.msgpack.Ext(80, b""),
        # A MAC made for another key, in another namespace:
        msgspec.msgpack.Ext(80, make(OPTIONS={"signing_key": secret, "namespace": "other"})
                            ._shared.mac(made, real) + real),
    ]
    for index, forged in enumerate(forgeries, 1):
        raw.set(backend.cache.keys.value(made), signed.encode(made, forged, 2**62))
        assert backend.get("session", "miss") == "miss"
        assert backend.get_many(["session"]) == {}
        assert not backend.has_key("session")
        assert backend.rejected_values >= index
    assert EXPLOITED == []
    pickle.loads(evil)  # the control: unpickled, it would have run
    assert EXPLOITED == ["ran"]
    EXPLOITED.clear()
    # The same service key lets a plain FleetCache read the backend's plain values.
    backend.set("plain", {"a": 1})
    with FleetCache.from_url(backend.cache.config.url, namespace=backend.cache.config.namespace,
                             signing_key=secret) as other:
        assert other.get(made.replace("session", "plain")) == {"a": 1}


def test_signing_key_is_derived_from_secret_key_not_equal_to_it(
    make: Make
) -> None:
    backend = make()
    expected = salted_hmac(SALT + ".signing_key", b"", secret=settings.SECRET_KEY,
                           algorithm="sha256").digest()
    assert backend.cache.config.signing_key == expected
    assert settings.SECRET_KEY.encode() not in expected
    backend.set("k", Point(1))
    with override_settings(SECRET_KEY="another-projects-secret-key-000"):
        stranger = make()
        assert stranger.cache is not backend.cache
        assert stranger.get("k", "miss") == "miss"  # its envelope does not verify
    with override_settings(SECRET_KEY=""), pytest.raises(ConfigError, match="SECRET_KEY"):
        make()


def test_a_pickle_that_no_longer_unpickles_is_a_miss(backend: FleetCacheBackend) -> None:
    module = types.ModuleType("fleetcache_gone_module")
    gone = type("Gone", (), {"__module__": module.__name__})
    module.Gone = gone  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        backend.set("k", gone())
    finally:
        del sys.modules[module.__name__]  # a deploy removed the class
    assert backend.get("k", "miss") == "miss"
    assert backend.rejected_values == 1


# -- timeouts ------------------------------------------------------------------------------

def pttl(raw: redis.Redis, backend: FleetCacheBackend, key: str) -> float:
    return float(raw.pttl(backend.cache.keys.value(backend.make_key(key)))) / 1000


def test_timeouts_as_django_defines_them(make: Make, raw: redis.Redis) -> None:
    backend = make(TIMEOUT=60, OPTIONS={"ttl_jitter": 0})
    backend.set("default", 1)
    assert 59 < pttl(raw, backend, "default") <= 60
    backend.set("forever", 1, None)
    assert pttl(raw, backend, "forever") > NO_EXPIRY_SECONDS - 60
    backend.set("long", 1, 10**12)  # past ten years: forever too
    assert pttl(raw, backend, "long") > NO_EXPIRY_SECONDS - 60
    backend.set("fraction", 1, 0.5)
    assert 0.4 < pttl(raw, backend, "fraction") <= 0.5
    for timeout in (0, -5):
        backend.set("gone", 1)
        backend.set("gone", 2, timeout)  # "do not cache" deletes what was there
        assert not backend.has_key("gone")
        assert backend.add("new", 1, timeout) is True  # the key was free...
        assert not backend.has_key("new")  # ...and nothing stays
        backend.set("taken", 1)
        assert backend.add("taken", 2, timeout) is False
        backend.set_many({"m1": 1, "taken": 3}, timeout)
        assert backend.get_many(["m1", "taken"]) == {}
    assert backend.get_backend_timeout() == 60
    assert backend.get_backend_timeout(None) is None
    assert backend.get_backend_timeout(-5) == 0
    assert backend.get_backend_timeout(2.5) == 2.5
    with pytest.raises(InvalidArgumentError):
        backend.set("k", 1, "60")
    forever = make(TIMEOUT=None)
    forever.set("k", 1)
    assert pttl(raw, forever, "k") > NO_EXPIRY_SECONDS - 60
    never = make(TIMEOUT=0)
    never.set("n", 1)
    assert not never.has_key("n")


def test_expiry_reaches_l1_too(backend: FleetCacheBackend) -> None:
    backend.set("k", "v", 0.3)
    assert backend.get("k") == "v"  # now in L1
    time.sleep(0.4)
    assert backend.get("k") is None


# -- incr / decr ---------------------------------------------------------------------------

def test_incr_is_atomic_across_workers(
    workers: tuple[FleetCacheBackend, FleetCacheBackend], raw: redis.Redis
) -> None:
    a, b = workers
    a.set("n", 0, 120)
    seen: list[int] = []

    def count(worker: FleetCacheBackend) -> None:
        for _ in range(50):
            seen.append(worker.incr("n"))

    threads = [threading.Thread(target=count, args=(w,)) for w in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == list(range(1, 201))  # no increment lost, none seen twice
    # each worker's L1 holds its own last result until the other's notice lands
    assert wait_until(lambda: a.get("n") == 200 == b.get("n"))
    assert b.decr("n", 10) == 190
    assert 100 < pttl(raw, a, "n") <= 120  # the expiry is kept


def test_incr_errors(backend: FleetCacheBackend, make: Make) -> None:
    with pytest.raises(ValueError, match="Key 'missing' not found"):
        backend.incr("missing")
    for value in (None, "1", 1.5, Point(1), 2**70):
        backend.set("k", value)
        with pytest.raises(TypeError) as caught:
            backend.incr("k")
        assert isinstance(caught.value, ValueTypeError)
    dead = make(location=DEAD_URL)
    with pytest.raises(BackendUnavailableError):  # an outage is never "not found"
        dead.incr("counter")


# -- touch ---------------------------------------------------------------------------------

def test_touch(backend: FleetCacheBackend, raw: redis.Redis) -> None:
    backend.set("k", Point(2), 1)
    assert backend.touch("k", 100) is True
    assert 94 < pttl(raw, backend, "k") <= 100  # ttl_jitter: up to 5% shorter
    time.sleep(1.1)
    assert backend.get("k") == Point(2)  # past the old expiry, in L1 and L2
    assert backend.touch("k", None) is True
    assert pttl(raw, backend, "k") > NO_EXPIRY_SECONDS - 60
    assert backend.touch("k", 0) is True
    assert backend.get("k") is None
    assert backend.touch("k", 10) is False


def test_touch_reaches_the_other_workers(
    workers: tuple[FleetCacheBackend, FleetCacheBackend]
) -> None:
    a, b = workers
    a.set("k", "v", 100)
    made = b.make_key("k")
    assert wait_until(lambda: b.get("k") == "v" and l1_entry(b.cache, made) is not None)
    assert a.touch("k", 0.3)
    # b's L1 copy was dropped by the notice, so it cannot outlive the new expiry
    assert wait_until(lambda: l1_entry(b.cache, made) is None)
    time.sleep(0.4)
    assert b.get("k") is None


# -- the fleet -----------------------------------------------------------------------------

def test_a_delete_in_one_worker_reaches_the_others_l1(
    workers: tuple[FleetCacheBackend, FleetCacheBackend]
) -> None:
    a, b = workers
    a.set("k", {"v": 1})
    made = b.make_key("k")
    # b's read is promoted into its L1 unless a's own notice raced it: then read again
    assert wait_until(lambda: b.get("k") == {"v": 1} and l1_entry(b.cache, made) is not None)
    assert a.delete("k") is True
    assert wait_until(lambda: l1_entry(b.cache, made) is None)
    assert b.get("k") is None
    a.set_many({"x": 1, "y": Point(1)})
    assert b.get_many(["x", "y"]) == {"x": 1, "y": Point(1)}
    a.delete_many(["x", "y"])
    assert wait_until(lambda: l1_entry(b.cache, b.make_key("y")) is None)
    a.set("z", 1)
    assert b.get("z") == 1
    b.clear()
    assert wait_until(lambda: l1_entry(a.cache, a.make_key("z")) is None)
    assert a.get("z") is None


def test_get_or_set_computes_once_for_the_fleet(
    workers: tuple[FleetCacheBackend, FleetCacheBackend]
) -> None:
    calls: list[int] = []
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def compute() -> Point:
        calls.append(1)
        time.sleep(0.3)
        return Point(len(calls))

    def one(worker: FleetCacheBackend) -> None:
        barrier.wait(10)
        results.append(worker.get_or_set("cold", compute, 60))

    threads = [threading.Thread(target=one, args=(w,)) for w in workers * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1
    assert results == [Point(1)] * 8
    assert workers[0].cache.stats().computes + workers[1].cache.stats().computes == 1


def test_get_or_set_values_and_timeouts(backend: FleetCacheBackend) -> None:
    assert backend.get_or_set("plain", "default") == "default"
    assert backend.get_or_set("plain", "other") == "default"
    assert backend.get_or_set("none", lambda: None) is None
    assert backend.get("none", "miss") is None
    assert backend.get_or_set("zero", lambda: Point(5), 0) == Point(5)
    assert not backend.has_key("zero")
    assert backend.get_or_set("v", lambda: [1], version=4) == [1]
    assert backend.get("v", version=4) == [1]


# -- outages and async -----------------------------------------------------------------------

def test_reads_degrade_writes_raise(make: Make) -> None:
    dead = make(location=DEAD_URL)
    assert dead.get("k", "miss") == "miss"
    assert dead.get_many(["k"]) == {}
    with pytest.raises(BackendUnavailableError):
        dead.set("k", 1)
    with pytest.raises(BackendUnavailableError):
        dead.delete("k")


def test_async_methods(backend: FleetCacheBackend) -> None:
    async def flow() -> Any:
        await backend.aset("a", (1, 2))
        assert await backend.aadd("n", 1)
        await backend.aincr("n")
        return await backend.aget("a"), await backend.aget("n")

    assert asyncio.run(flow()) == ((1, 2), 2)
