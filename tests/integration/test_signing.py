"""Payload signing: a client with Redis access cannot plant values in the app's cache."""

from __future__ import annotations

from collections.abc import Callable

import redis

from fleetcache import ConfigError, FleetCache
from fleetcache.core.codec import Codec

from ..servers import Server

SECRET = "a-long-enough-fleet-secret"


def test_signed_fleet_shares_values(make_cache: Callable[..., FleetCache]) -> None:
    a, b = make_cache(signing_key=SECRET), make_cache(signing_key=SECRET)
    a.set("k", {"role": "user"})
    assert b.get("k") == {"role": "user"}
    assert b.get_or_compute("c", lambda: 5) == 5
    assert a.get_or_compute("c", lambda: 6) == 5


def test_planted_values_read_as_misses_and_are_recomputed(
    make_cache: Callable[..., FleetCache], server: Server, namespace: str
) -> None:
    cache = make_cache(signing_key=SECRET)
    raw = redis.Redis.from_url(server.url)
    # A well-formed but unsigned envelope, exactly what an attacker could write.
    forged = Codec(1 << 20).encode("user:1", {"role": "admin"}, 2**62)
    raw.set(f"{namespace}:v:user:1", forged)
    assert cache.get("user:1") is None
    assert cache.stats().corrupt_values == 1
    assert cache.get_or_compute("user:1", lambda: {"role": "user"}) == {"role": "user"}
    assert raw.get(f"{namespace}:v:user:1") != forged  # replaced by the signed value
    # An unsigned cache cannot read the signed fleet's values either.
    unsigned = make_cache()
    assert unsigned.get("user:1") is None


def test_short_signing_keys_are_refused() -> None:
    try:
        FleetCache.from_url("redis://127.0.0.1:1/0", signing_key="short")
    except ConfigError as exc:
        assert "short" not in str(exc)
    else:
        raise AssertionError("a 5-character signing key was accepted")
