"""Typed reads: ``get(key, type=T)`` and ``get_or_compute(..., type=T)`` convert, validated."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import msgspec
import pytest
import redis

from fleetcache import FleetCache, FleetCacheError, ValueTypeError

from ..servers import Server


class User(msgspec.Struct):
    name: str
    score: int


@dataclasses.dataclass
class Point:
    x: float
    y: float


@pytest.fixture
def pair(make_cache: Callable[..., FleetCache]) -> tuple[FleetCache, FleetCache]:
    a, b = make_cache(), make_cache()
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    return a, b


def test_get_converts_from_l2_and_from_l1(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    a.set("u", {"name": "alice", "score": 3})
    assert b.get("u", type=User) == User("alice", 3)  # L2 read
    assert b.get("u", type=User) == User("alice", 3)  # L1 hit
    assert b.get("u") == {"name": "alice", "score": 3}  # the plain form is what L1 holds
    a.set("p", {"x": 1.5, "y": 2})
    assert b.get("p", type=Point) == Point(1.5, 2.0)
    a.set("ids", [1, 2, 3])
    assert b.get("ids", type=list[int]) == [1, 2, 3]


def test_a_misfit_raises_naming_key_and_type(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    a.set("u", {"name": "alice"})  # no score
    for cache in (b, b, a):  # L2 read, L1 hit, the writer's own L1
        with pytest.raises(ValueTypeError, match=r"'u' is not a User.*score") as info:
            cache.get("u", type=User)
        assert isinstance(info.value, FleetCacheError) and isinstance(info.value, TypeError)
        assert info.value.key == "u" and info.value.expected is User
        assert not isinstance(info.value.__cause__, ValueTypeError)


def test_a_miss_is_the_default_whatever_the_type(cache: FleetCache) -> None:
    assert cache.get("nope", type=User) is None
    assert cache.get("nope", "dflt", type=User) == "dflt"


def test_get_or_compute_returns_the_type_in_every_process(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    computed = a.get_or_compute("u", lambda: User("bob", 7), type=User)
    assert computed == User("bob", 7)
    assert b.get_or_compute("u", lambda: User("other", 0), type=User) == User("bob", 7)
    assert a.get_or_compute("u", lambda: User("other", 0), type=User) == User("bob", 7)


def test_a_computed_misfit_is_not_stored(pair: tuple[FleetCache, FleetCache],
                                         server: Server) -> None:
    a, b = pair
    with pytest.raises(ValueTypeError, match="'u' is not a User"):
        a.get_or_compute("u", lambda: {"name": "x", "score": "high"}, type=User)
    raw = redis.Redis.from_url(server.url)
    try:
        assert raw.get(a.keys.value("u")) is None
        assert raw.get(a.keys.lock("u")) is None  # the lock was released: no one waits
    finally:
        raw.close()
    assert a.get("u") is None
    assert b.get_or_compute("u", lambda: User("y", 1), type=User) == User("y", 1)
