"""``sync_strategy="update"``: a write's notice carries the new value, and the processes
holding the key replace their L1 entry instead of re-reading Redis; never with an older
value than they hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fleetcache import ConfigError, FleetCache
from fleetcache.testing import l1_entry

from ..faults import l2_replaced, receiver_replaced
from ..waiting import wait_until
from .test_invalidation import RacingStore

MakeCache = Callable[..., FleetCache]
ABSENT = "<absent>"


@pytest.fixture
def updating(make_cache: MakeCache) -> tuple[FleetCache, FleetCache]:
    """Two connected caches ("workers") with sync_strategy="update"."""
    a, b = make_cache(sync_strategy="update"), make_cache(sync_strategy="update")
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    return a, b


def applied(reader: FleetCache, act: Callable[[], Any], sent: int = 1) -> Any:
    """Run ``act``; wait until ``reader`` applied the ``sent`` notices it sends."""
    before = reader.stats().invalidations_received
    result = act()
    assert wait_until(lambda: reader.stats().invalidations_received >= before + sent)
    return result


def served_from_l1(cache: FleetCache, key: str) -> Any:
    """``get(key)``, asserting it was an L1 hit."""
    hits = cache.stats().l1_hits
    value = cache.get(key, ABSENT)
    assert cache.stats().l1_hits == hits + 1, f"{key!r} was not served from L1"
    return value


def hold(cache: FleetCache, key: str) -> Any:
    """Read ``key`` until an L1 hit; its value."""
    cache.get(key)
    return served_from_l1(cache, key)


def test_a_write_replaces_the_other_workers_entry_without_an_l2_read(
    updating: tuple[FleetCache, FleetCache], raw: redis.Redis,
) -> None:
    a, b = updating
    applied(b, lambda: a.set("k", {"v": 1}))
    assert hold(b, "k") == {"v": 1}
    raw.config_resetstat()
    applied(b, lambda: a.set("k", {"v": 2}))
    assert served_from_l1(b, "k") == {"v": 2}
    assert b.stats().l1_updates == 1
    reads = {k: v for k, v in raw.info("commandstats").items()
             if k.split("_", 1)[1] in ("get", "mget")}
    assert reads == {}, f"B read Redis although the notice carried the value: {reads}"


def test_a_worker_not_holding_the_key_does_not_take_it(
    updating: tuple[FleetCache, FleetCache],
) -> None:
    a, b = updating
    applied(b, lambda: a.set("k", 1))
    assert l1_entry(b, "k") is None


def test_incr_add_and_get_or_compute_send_their_values(
    updating: tuple[FleetCache, FleetCache],
) -> None:
    a, b = updating
    applied(b, lambda: a.set("n", 1))
    assert hold(b, "n") == 1
    applied(b, lambda: a.incr("n"))
    assert served_from_l1(b, "n") == 2
    applied(b, lambda: a.delete("n"))
    assert b.get("n", ABSENT) == ABSENT
    assert b.stats().l1_updates == 1


def test_a_value_over_the_limit_goes_out_as_an_invalidation(make_cache: MakeCache) -> None:
    a = make_cache(sync_strategy="update", sync_value_limit=64)
    b = make_cache(sync_strategy="update", sync_value_limit=64)
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    applied(b, lambda: a.set("k", "small"))
    assert hold(b, "k") == "small"
    applied(b, lambda: a.set("k", "x" * 500))
    assert l1_entry(b, "k") is None, "a value over sync_value_limit reached B's L1"
    assert b.get("k") == "x" * 500
    assert b.stats().l1_updates == 0


def test_a_reader_holding_a_newer_value_keeps_it(
    updating: tuple[FleetCache, FleetCache],
) -> None:
    """B's own write (newer in Redis's order) lands while A's older notice is in flight:
    the older notice must not replace B's value."""
    a, b = updating
    applied(b, lambda: a.set("k", "v0"))
    assert hold(b, "k") == "v0"
    gate = threading.Event()
    released = threading.Event()
    done = threading.Event()

    class Late:
        """Holds the listener at A's update until B has written."""

        def __init__(self, real: Any) -> None:
            self._real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

        def update(self, key: str, blob: bytes, version: int) -> None:
            gate.set()
            released.wait(5)
            self._real.update(key, blob, version)
            done.set()

    with receiver_replaced(b, Late):
        try:
            a.set("k", "older")  # B's listener is now holding this notice
            assert gate.wait(5)
            b.set("k", "newer")  # after A's in Redis's order
        finally:
            released.set()
        assert done.wait(5), "A's update never reached B's L1"
    assert served_from_l1(b, "k") == "newer", "an older update replaced B's own write"
    assert wait_until(lambda: a.get("k") == "newer")


def test_a_read_racing_an_update_is_not_promoted_over_it(
    updating: tuple[FleetCache, FleetCache],
) -> None:
    a, b = updating
    applied(b, lambda: a.set("k", "old"))
    raced: list[bool] = []

    def hook(_: str, __: Any) -> None:
        if not raced:
            raced.append(True)
            applied(b, lambda: a.set("k", "new"))

    with l2_replaced(b, lambda real: RacingStore(real, hook)):
        assert b.get("k") == "old"
    assert raced and b.stats().promotions == 0
    assert b.get("k") == "new"


def test_a_corrupt_value_in_an_update_drops_the_entry(
    updating: tuple[FleetCache, FleetCache],
) -> None:
    a, b = updating
    applied(b, lambda: a.set("k", "v1"))
    assert hold(b, "k") == "v1"
    b._tiers.update("k", b"\xc1 not an envelope", 1 << 62)
    assert l1_entry(b, "k") is None
    assert b.stats().corrupt_values == 1


def test_signed_values_are_verified_before_they_replace_anything(make_cache: MakeCache) -> None:
    key = "s" * 32
    a = make_cache(sync_strategy="update", signing_key=key)
    b = make_cache(sync_strategy="update", signing_key=key)
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    applied(b, lambda: a.set("k", "v1"))
    assert hold(b, "k") == "v1"
    applied(b, lambda: a.set("k", "v2"))
    assert served_from_l1(b, "k") == "v2"
    forged = make_cache(sync_strategy="update", signing_key="f" * 32)
    assert forged.connect(wait=5.0)
    applied(b, lambda: forged.set("k", "forged"))
    assert l1_entry(b, "k") is None, "a value whose signature fails replaced B's entry"


def test_update_needs_the_replay_log() -> None:
    with pytest.raises(ConfigError, match="replay log"):
        FleetCache(sync_strategy="update", replay_log_length=0)
    with pytest.raises(ConfigError, match="sync_strategy"):
        FleetCache(sync_strategy="push")  # type: ignore[arg-type]


def test_a_mixed_fleet_stays_correct(make_cache: MakeCache) -> None:
    """Invalidate-only writers and updating readers (a rolling change of the setting)."""
    a = make_cache()  # sync_strategy="invalidate"
    b = make_cache(sync_strategy="update")
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    applied(b, lambda: a.set("k", 1))
    assert hold(b, "k") == 1
    applied(b, lambda: a.set("k", 2))
    assert b.get("k") == 2
    applied(a, lambda: b.set("k", 3))
    assert a.get("k") == 3
