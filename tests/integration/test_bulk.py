"""set_many and delete_many: one round trip, all or nothing, one notice for every key."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
import redis

from fleetcache import (
    BackendError,
    FleetCache,
    InvalidArgumentError,
    InvalidKeyError,
    ValueEncodeError,
)
from fleetcache.testing import l1_entry, l1_size

from ..servers import Server
from ..waiting import wait_until


def set_many_quietly(writer: FleetCache, reader: FleetCache, values: dict[str, object]) -> None:
    """Write, then wait until ``reader`` applied the notice (so it cannot race later reads)."""
    before = reader.stats().invalidations_received
    writer.set_many(values)
    assert wait_until(lambda: reader.stats().invalidations_received >= before + len(values))


def warm_in_l1(cache: FleetCache, values: dict[str, object]) -> None:
    assert cache.get_many(list(values)) == values
    hits = cache.stats().l1_hits
    assert cache.get_many(list(values)) == values
    assert cache.stats().l1_hits == hits + len(values), "not promoted into L1"


def test_set_many_writes_all_and_drops_them_from_other_l1s(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    set_many_quietly(a, b, {"k1": 1, "k2": 2, "k3": 3})
    warm_in_l1(b, {"k1": 1, "k2": 2, "k3": 3})
    received = b.stats().invalidations_received
    a.set_many({"k1": "one", "k2": "two"}, ttl=60)
    assert wait_until(lambda: b.stats().invalidations_received == received + 2)
    assert b.get_many(["k1", "k2", "k3"]) == {"k1": "one", "k2": "two", "k3": 3}
    hits = a.stats().l1_hits
    assert a.get_many(["k1", "k2"]) == {"k1": "one", "k2": "two"}
    assert a.stats().l1_hits == hits + 2  # the writer keeps its own values in L1
    assert a.stats().invalidations_sent == 5


def test_set_many_applies_the_ttl(make_cache: Callable[..., FleetCache],
                                  raw: redis.Redis) -> None:
    cache = make_cache(ttl_jitter=0)  # exact TTLs (jitter: test_jitter.py)
    cache.set_many({"a": 1, "b": 2}, ttl=30)
    assert 29_000 < raw.pttl(cache.keys.value("a")) <= 30_000
    assert 29_000 < raw.pttl(cache.keys.value("b")) <= 30_000


@pytest.mark.parametrize(
    ("mapping", "error"),
    [({"ok": 1, "bad": object()}, ValueEncodeError),
     ({"ok": 1, "": 2}, InvalidKeyError),
     ({"ok": 1, "x" * 5000: 2}, InvalidKeyError)],
)
def test_set_many_with_one_bad_item_writes_nothing(
    cache: FleetCache, raw: redis.Redis, mapping: dict[str, object], error: type[Exception]
) -> None:
    cache.set("ok", "before")
    with pytest.raises(error):
        cache.set_many(mapping)
    assert cache.get("ok") == "before"
    assert raw.get(cache.keys.value("ok")) is not None
    assert cache.stats().invalidations_sent == 1


def test_set_many_rejects_a_bad_ttl_before_anything(cache: FleetCache) -> None:
    with pytest.raises(InvalidArgumentError):
        cache.set_many({"k": 1}, ttl=-1)
    assert cache.get("k") is None


def test_empty_bulk_calls_do_nothing(cache: FleetCache) -> None:
    cache.set_many({})
    assert cache.delete_many([]) == 0
    assert cache.stats().invalidations_sent == 0


def test_delete_many_counts_existing_and_drops_them_everywhere(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    set_many_quietly(a, b, {"k1": 1, "k2": 2})
    warm_in_l1(b, {"k1": 1, "k2": 2})
    warm_in_l1(a, {"k1": 1, "k2": 2})
    assert a.delete_many(["k1", "k2", "never"]) == 2
    assert wait_until(lambda: b.get_many(["k1", "k2"]) == {})
    assert a.get_many(["k1", "k2"]) == {}
    with pytest.raises(InvalidKeyError):
        a.delete_many(["fine", ""])


def test_bulk_writes_with_redis_down_raise_and_keep_no_old_value(
    own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    cache = caches(own_server.url)
    cache.set_many({"a": 1, "b": 2})
    assert cache.get("a") == 1  # in L1
    own_server.stop()
    with pytest.raises(BackendError):
        cache.set_many({"a": 10, "b": 20})
    assert l1_entry(cache, "a") is None and l1_entry(cache, "b") is None
    with pytest.raises(BackendError):
        cache.delete_many(["a"])


def test_a_list_notice_with_a_non_string_key_flushes_l1(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis
) -> None:
    a, b = pair
    a.set("k", "v")
    assert wait_until(lambda: b.get("k") == "v" and l1_size(b) == 1)
    bogus = msgspec.msgpack.encode([b"someone-else", ["ok", 7], False])
    raw.publish(b.keys.channel, bogus)
    assert wait_until(lambda: l1_size(b) == 0), "a notice B could not fully read was ignored"
