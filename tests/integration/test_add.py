"""FleetCache.add: SET NX, one winner fleet-wide, nothing written for bad values."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from fleetcache import FleetCache, ValueEncodeError

from ..helpers import run_threads


def test_add_stores_only_when_absent(cache: FleetCache) -> None:
    assert cache.add("k", {"v": 1}, ttl=60) is True
    assert cache.add("k", {"v": 2}, ttl=60) is False
    assert cache.get("k") == {"v": 1}
    cache.delete("k")
    assert cache.add("k", {"v": 3}) is True
    assert cache.get("k") == {"v": 3}


def test_concurrent_adds_from_two_instances_have_one_winner(
    make_cache: Callable[..., FleetCache],
) -> None:
    a, b = make_cache(), make_cache()
    barrier = threading.Barrier(16)
    wins: list[int] = []

    def contender(i: int) -> None:
        barrier.wait()
        if (a if i % 2 else b).add("race", i, ttl=60):
            wins.append(i)

    run_threads([threading.Thread(target=contender, args=(i,)) for i in range(16)], 5)
    assert len(wins) == 1
    assert a.get("race") == wins[0] == b.get("race")


def test_add_of_an_unencodable_value_writes_nothing(cache: FleetCache) -> None:
    with pytest.raises(ValueEncodeError):
        cache.add("bad", object())
    assert cache.get("bad", "absent") == "absent"
    assert cache.add("bad", 1) is True
