"""TTL jitter: every TTL written is shortened by up to ``ttl_jitter``, never lengthened."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from fleetcache import CacheStrategy, ConfigError, FleetCache
from fleetcache.flask_caching import NO_EXPIRY_SECONDS
from fleetcache.testing import FakeClock, l1_entry

N = 200


def pttls(raw: redis.Redis, cache: FleetCache, keys: list[str]) -> list[int]:
    return [raw.pttl(cache.keys.value(k)) for k in keys]


def test_every_write_is_spread_below_the_ttl_asked_for(
    make_cache: Callable[..., FleetCache], raw: redis.Redis,
) -> None:
    cache = make_cache(ttl_jitter=0.2)  # wide, so the spread is plain to see
    singles = [f"s{i}" for i in range(N)]
    for key in singles:
        cache.set(key, 1, ttl=100)
    bulk = [f"b{i}" for i in range(N)]
    cache.set_many(dict.fromkeys(bulk, 1), ttl=100)  # written together: expire apart
    computed = [f"c{i}" for i in range(50)]
    for key in computed:
        cache.get_or_compute(key, lambda: 1, strategy=CacheStrategy.custom(100))
    for keys in (singles, bulk, computed):
        ttls = pttls(raw, cache, keys)
        assert all(79_000 < t <= 100_000 for t in ttls), (min(ttls), max(ttls))
        assert max(ttls) - min(ttls) > 10_000  # spread over most of the 20 s band
        assert len(set(ttls)) > len(keys) // 2


def test_the_default_is_five_percent(make_cache: Callable[..., FleetCache],
                                     raw: redis.Redis) -> None:
    cache = make_cache()
    keys = [f"k{i}" for i in range(N)]
    cache.set_many(dict.fromkeys(keys, 1), ttl=1000)
    ttls = pttls(raw, cache, keys)
    assert all(949_000 < t <= 1_000_000 for t in ttls)
    assert min(ttls) < 990_000  # some were shortened


def test_zero_writes_exact_ttls_and_forever_stays_forever(
    make_cache: Callable[..., FleetCache], raw: redis.Redis,
) -> None:
    exact = make_cache(ttl_jitter=0)
    exact.set_many({f"k{i}": 1 for i in range(20)}, ttl=100)
    assert all(99_000 < t <= 100_000 for t in pttls(raw, exact, [f"k{i}" for i in range(20)]))
    jittered = make_cache()
    jittered.set("forever", 1, ttl=NO_EXPIRY_SECONDS)  # a backend's "no expiry"
    assert raw.pttl(jittered.keys.value("forever")) > (NO_EXPIRY_SECONDS - 60) * 1000


def test_l1_never_outlives_the_jittered_l2_ttl(make_cache: Callable[..., FleetCache]) -> None:
    clock = FakeClock()
    cache = make_cache(ttl_jitter=0.5, clock=clock)
    assert cache.connect(wait=5.0)
    for i in range(50):
        cache.set(f"k{i}", 1, ttl=10)
    for i in range(50):
        entry = l1_entry(cache, f"k{i}")
        assert entry is not None and entry[1] <= clock.monotonic() + 10


@pytest.mark.parametrize("bad", [-0.1, 1, 1.5, True, "0.1", float("nan")])
def test_ttl_jitter_is_validated(make_cache: Callable[..., FleetCache], bad: object) -> None:
    with pytest.raises(ConfigError, match="ttl_jitter"):
        make_cache(ttl_jitter=bad)
