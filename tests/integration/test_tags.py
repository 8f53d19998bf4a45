"""Tags and prefixes: ``set/set_many/get_or_compute(..., tags=...)``, ``invalidate_tag`` and
``delete_prefix``, fleet-wide, against a real server.

Every test reads through a second cache ("worker B") that holds the values in its L1, so
what is checked is the notice reaching another process's L1, not only the L2 deletes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fleetcache import FleetCache, InvalidArgumentError, InvalidKeyError

from ..faults import l2_replaced
from ..helpers import namespace_data_keys
from ..servers import Server
from ..waiting import wait_until
from .procs import Fleet, connected, hold
from .test_invalidation import RacingStore, set_quietly, warm

MakeCache = Callable[..., FleetCache]
ABSENT = "<absent>"


def l1_hit(cache: FleetCache, key: str) -> bool:
    """Whether one get of ``key`` is served from L1 (the get is the probe)."""
    hits = cache.stats().l1_hits
    cache.get(key, ABSENT)
    return cache.stats().l1_hits == hits + 1


def notices(cache: FleetCache) -> int:
    return cache.stats().invalidations_received


def invalidated_in(reader: FleetCache, act: Callable[[], Any], sent: int = 2) -> Any:
    """Run ``act`` and wait until ``reader`` applied the ``sent`` notices it sends (two for
    a tag or a prefix: before and after the deletes; one per key written); its result."""
    before = notices(reader)
    result = act()
    assert wait_until(lambda: notices(reader) >= before + sent), "the notices never arrived"
    return result


# -- invalidate_tag -------------------------------------------------------------------------


def test_invalidate_tag_drops_the_tagged_values_everywhere_and_nothing_else(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis,
) -> None:
    a, b = pair
    invalidated_in(b, lambda: a.set("u1:profile", {"name": "ann"}, tags=["user:1"]), 1)
    invalidated_in(b, lambda: a.set_many({"u1:posts": [1, 2], "u1:feed": [3]},
                                         tags=["user:1", "feeds"]), 2)
    set_quietly(a, b, "u2:profile", {"name": "bob"})
    for key in ("u1:profile", "u1:posts", "u1:feed", "u2:profile"):
        assert b.get(key) is not None
        assert l1_hit(b, key), key  # promoted, with its tags, from the envelope

    assert invalidated_in(b, lambda: a.invalidate_tag("user:1")) == 3
    for key in ("u1:profile", "u1:posts", "u1:feed"):
        assert b.get(key, ABSENT) == ABSENT, f"{key} survived its tag in B"
        assert a.get(key, ABSENT) == ABSENT, f"{key} survived its tag in the writer"
    assert l1_hit(b, "u2:profile"), "an untagged entry was dropped too"
    assert not raw.exists(f"{a.config.namespace}:t:user:1"), "the tag's set outlived it"
    assert invalidated_in(b, lambda: a.invalidate_tag("user:1")) == 0  # idempotent


def test_the_other_tags_of_a_dropped_value_stay_usable(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    invalidated_in(b, lambda: a.set_many({"x": 1, "y": 2}, tags=["feeds", "t2"]), 2)
    invalidated_in(b, lambda: a.set("z", 3, tags=["feeds"]), 1)
    for key in ("x", "y", "z"):
        warm(b, key, {"x": 1, "y": 2, "z": 3}[key])
    assert invalidated_in(b, lambda: a.invalidate_tag("t2")) == 2
    assert l1_hit(b, "z")
    assert invalidated_in(b, lambda: a.invalidate_tag("feeds")) == 1  # x, y gone already
    assert b.get("z", ABSENT) == ABSENT


def test_get_or_compute_stores_with_its_tags(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return f"v{len(calls)}"

    assert b.get_or_compute("page", compute, tags=["cms"]) == "v1"
    assert l1_hit(b, "page")
    assert invalidated_in(b, lambda: a.invalidate_tag("cms")) == 1
    assert b.get_or_compute("page", compute, tags=["cms"]) == "v2"
    assert len(calls) == 2


def test_a_cached_not_found_carries_its_tags(pair: tuple[FleetCache, FleetCache]) -> None:
    from fleetcache import NOT_FOUND

    a, b = pair
    assert b.get_or_compute("missing", lambda: NOT_FOUND, negative_ttl=60,
                            tags=["cms"]) is NOT_FOUND
    assert invalidated_in(b, lambda: a.invalidate_tag("cms")) == 1
    assert b.get_or_compute("missing", lambda: "found now", negative_ttl=60) == "found now"


def test_a_key_rewritten_without_the_tag_is_never_served_stale(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    """The tag's set still names the key: its untagged value is deleted from L2 too (one
    more miss), and every read is the current value or a miss."""
    a, b = pair
    invalidated_in(b, lambda: a.set("k", "tagged", tags=["t"]), 1)
    set_quietly(a, b, "k", "untagged")
    warm(b, "k", "untagged")
    assert invalidated_in(b, lambda: a.invalidate_tag("t")) == 1
    assert b.get("k", ABSENT) in ("untagged", ABSENT)
    assert a.get("k", ABSENT) in ("untagged", ABSENT)


def test_a_tag_set_lives_as_long_as_its_longest_member(
    cache: FleetCache, raw: redis.Redis,
) -> None:
    tag_set = f"{cache.config.namespace}:t:t"
    cache.set("a", 1, ttl=100, tags=["t"])
    assert 90_000 < raw.pttl(tag_set) <= 100_000
    cache.set("b", 1, ttl=1000, tags=["t"])
    assert 900_000 < raw.pttl(tag_set) <= 1_000_000
    cache.set("c", 1, ttl=10, tags=["t"])  # a shorter member does not shorten the set
    assert raw.pttl(tag_set) > 900_000
    assert sorted(raw.smembers(tag_set)) == [b"a", b"b", b"c"]


def test_invalidate_tag_of_10000_keys_walks_the_set_in_batches(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis,
) -> None:
    a, b = pair
    for start in range(0, 10_000, 1000):
        invalidated_in(b, lambda s=start: a.set_many(  # type: ignore[misc]
            {f"k{i}": i for i in range(s, s + 1000)}, tags=["big"]), 1000)
    set_quietly(a, b, "other", "stays")
    warm(b, "k5", 5)
    warm(b, "other", "stays")
    assert invalidated_in(b, lambda: a.invalidate_tag("big")) == 10_000
    assert b.get("k5", ABSENT) == ABSENT
    assert l1_hit(b, "other")
    assert namespace_data_keys(raw, a.config.namespace, f"{a.config.namespace}:v:k*") == []


def test_a_read_racing_invalidate_tag_is_not_promoted(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    """B's GET returns the tagged value; the tag is invalidated before B stores it in L1:
    B's L1 does not know the key yet, so the notice must void every promotion in flight."""
    a, b = pair
    invalidated_in(b, lambda: a.set("k", "old", tags=["t"]), 1)
    raced: list[bool] = []

    def hook(_: str, __: Any) -> None:
        if not raced:
            raced.append(True)
            invalidated_in(b, lambda: a.invalidate_tag("t"))

    with l2_replaced(b, lambda real: RacingStore(real, hook)):
        assert b.get("k") == "old"  # read before the invalidation: linearizable
    assert raced
    assert b.stats().promotions == 0
    assert b.get("k", ABSENT) == ABSENT


def test_a_tag_notice_missed_in_a_gap_is_replayed(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis,
) -> None:
    a, b = pair
    invalidated_in(b, lambda: a.set("tagged", 1, tags=["t"]), 1)
    set_quietly(a, b, "kept", 2)
    warm(b, "tagged", 1)
    warm(b, "kept", 2)
    reconnects = b.stats().reconnects
    raw.client_kill_filter(_type="pubsub")
    a.invalidate_tag("t")  # likely inside B's gap: only the log can tell B
    assert wait_until(lambda: b.stats().reconnects > reconnects and b.health().bus_connected,
                      5.0)
    assert b.get("tagged", ABSENT) == ABSENT
    assert l1_hit(b, "kept"), "the replay should have kept the untagged entry"
    assert b.stats().l1_flushes == 0


def test_tags_across_threads_of_one_process(make_cache: MakeCache) -> None:
    """Writers tag while another thread invalidates: every read afterwards is a miss or a
    value written after the invalidation began (the index never leaks a dropped key)."""
    cache = make_cache()
    assert cache.connect(wait=5.0)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            cache.set(f"w{i % 50}", i, tags=["hot"])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20):
            cache.invalidate_tag("hot")
    finally:
        stop.set()
        thread.join(5)
    cache.invalidate_tag("hot")
    assert all(cache.get(f"w{i}", ABSENT) == ABSENT for i in range(50))


# -- delete_prefix --------------------------------------------------------------------------


def test_delete_prefix_drops_exactly_the_keys_with_the_prefix(
    pair: tuple[FleetCache, FleetCache],
) -> None:
    a, b = pair
    keys = ["user:1:a", "user:1:b", "user:10:x", "user:2:a", "user:1", "*user:1:"]
    for key in keys:
        invalidated_in(b, lambda k=key: a.set(k, k), 1)  # type: ignore[misc]
    for key in keys:
        warm(b, key, key)
    assert invalidated_in(b, lambda: a.delete_prefix("user:1:")) == 2
    for key in keys:
        expected = ABSENT if key.startswith("user:1:") else key
        assert b.get(key, ABSENT) == expected, key
        assert a.get(key, ABSENT) == expected, key


def test_delete_prefix_treats_glob_characters_literally(cache: FleetCache) -> None:
    for key in ("a*b", "a*bc", "axb", "a?", "a[1]", "a[1]x", "a1"):
        cache.set(key, 1)
    assert cache.delete_prefix("a*b") == 2
    assert cache.delete_prefix("a[1]") == 2
    assert cache.get("axb") == 1 and cache.get("a1") == 1 and cache.get("a?") == 1


def test_delete_prefix_of_a_large_namespace(cache: FleetCache) -> None:
    for start in range(0, 5000, 1000):
        cache.set_many({f"p:{i}": i for i in range(start, start + 1000)})
        cache.set_many({f"q:{i}": i for i in range(start, start + 1000)})
    assert cache.delete_prefix("p:") == 5000
    assert cache.get("p:42", ABSENT) == ABSENT and cache.get("q:42") == 42


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "error"),
    [("user:1", InvalidArgumentError), ([""], InvalidKeyError), ([1], InvalidKeyError),
     (["x" * 2000], InvalidKeyError), (["\udcff"], InvalidKeyError), (5, InvalidArgumentError)],
)
def test_bad_tags_raise_before_anything_is_written(
    cache: FleetCache, raw: redis.Redis, tags: Any, error: type[Exception],
) -> None:
    for write in (lambda: cache.set("k", 1, tags=tags),
                  lambda: cache.set_many({"k": 1}, tags=tags),
                  lambda: cache.get_or_compute("k", lambda: 1, tags=tags)):
        with pytest.raises(error):
            write()
    assert namespace_data_keys(raw, cache.config.namespace) == []


@pytest.mark.parametrize("bad", ["", 7, None, "x" * 2000])
def test_bad_tag_or_prefix_names_raise(cache: FleetCache, bad: Any) -> None:
    with pytest.raises(InvalidKeyError):
        cache.invalidate_tag(bad)
    with pytest.raises(InvalidKeyError):
        cache.delete_prefix(bad)


# -- across processes -----------------------------------------------------------------------


def hold_all(cache: FleetCache, keys: list[str]) -> int:
    """In a child: hold every key in L1; how many notices it has applied."""
    for key in keys:
        hold(cache, key)
    return cache.stats().invalidations_received


def read_each(cache: FleetCache, keys: list[str], notices_before: int) -> list[Any]:
    """In a child: once both notices of an invalidation arrived, each key's value."""
    assert wait_until(lambda: cache.stats().invalidations_received >= notices_before + 2, 5.0)
    return [cache.get(key, ABSENT) for key in keys]


@pytest.mark.slow
def test_invalidate_tag_reaches_every_process(server: Server, namespace: str) -> None:
    writer = FleetCache.from_url(server.url, namespace=namespace)
    try:
        assert writer.connect(wait=5.0)
        writer.set_many({f"t{i}": i for i in range(20)}, tags=["group"])
        writer.set_many({f"u{i}": i for i in range(20)})
        keys = [f"t{i}" for i in range(20)] + [f"u{i}" for i in range(20)]
        with Fleet() as fleet:
            children = [fleet.spawn(f"w{i}", connected(server.url, namespace))
                        for i in range(3)]
            before = [child.call(hold_all, keys) for child in children]
            assert writer.invalidate_tag("group") == 20
            for child, seen in zip(children, before, strict=True):
                values = child.call(read_each, keys, seen)
                assert values == [ABSENT] * 20 + list(range(20)), child
    finally:
        writer.close()
