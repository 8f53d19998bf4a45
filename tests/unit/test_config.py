"""CacheConfig defaults and validation, from_env, URL redaction, and CacheStrategy presets."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fleetcache import (
    CacheConfig,
    CacheStrategy,
    ConfigError,
    FleetCache,
    FleetCacheError,
    InvalidArgumentError,
)
from fleetcache.core.config import DEFAULT_URL, redact_url

# Port 1 on loopback: nothing listens there, and nothing here ever connects anyway.
URL = "redis://127.0.0.1:1/0"

DURATIONS = (
    "l1_ttl", "default_ttl", "socket_timeout", "connect_timeout", "pool_timeout",
    "stream_timeout_margin", "lock_timeout", "health_check_interval", "health_check_timeout",
    "degraded_l1_ttl", "max_listener_lag", "reconnect_backoff",
)
POSITIVE_INTS = ("l1_capacity", "stream_maxlen", "max_connections", "max_value_bytes",
                 "max_key_length")


@pytest.fixture(autouse=True)
def _no_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETCACHE_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


# -- defaults --------------------------------------------------------------------------------


def test_defaults() -> None:
    config = CacheConfig(url=URL)
    assert config.l1_capacity == 2000
    assert config.l1_ttl == 300
    assert config.default_ttl == 3600
    assert config.stream_maxlen == 1000
    assert 0 < config.socket_timeout <= 0.5
    assert 0 < config.connect_timeout <= 0.5
    assert config.namespace == "fleetcache"


def test_default_url_is_loopback() -> None:
    assert CacheConfig().url == DEFAULT_URL
    assert "127.0.0.1" in DEFAULT_URL or "localhost" in DEFAULT_URL


def test_config_is_frozen() -> None:
    config = CacheConfig(url=URL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.l1_ttl = 1.0  # type: ignore[misc]


def test_replace_changes_and_revalidates() -> None:
    config = CacheConfig(url=URL)
    changed = config.replace(l1_ttl=5)
    assert changed.l1_ttl == 5
    assert config.l1_ttl == 300
    with pytest.raises(ConfigError):
        config.replace(l1_ttl=0)


# -- validation ------------------------------------------------------------------------------


def test_config_error_hierarchy() -> None:
    assert issubclass(ConfigError, FleetCacheError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, InvalidArgumentError)


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize(
    "bad", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, False, "10", None, 10**12],
    ids=repr,
)
def test_bad_durations_raise_config_error(name: str, bad: object) -> None:
    with pytest.raises(ConfigError):
        CacheConfig(url=URL, **{name: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", DURATIONS)
def test_good_durations_are_accepted(name: str) -> None:
    assert getattr(CacheConfig(url=URL, **{name: 0.01}), name) == 0.01  # type: ignore[arg-type]
    assert getattr(CacheConfig(url=URL, **{name: 7}), name) == 7  # type: ignore[arg-type]


@pytest.mark.parametrize("name", POSITIVE_INTS)
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10", None], ids=repr)
def test_bad_counts_raise_config_error(name: str, bad: object) -> None:
    with pytest.raises(ConfigError):
        CacheConfig(url=URL, **{name: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.0, "1", None], ids=repr)
def test_bad_retries_raise_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        CacheConfig(url=URL, retries=bad)  # type: ignore[arg-type]


def test_zero_retries_is_allowed() -> None:
    assert CacheConfig(url=URL, retries=0).retries == 0


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "a:b", "a*b", "a/b", "x" * 65, "é", None, 12, b"bytes"],
    ids=repr,
)
def test_bad_namespace_raises_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        CacheConfig(url=URL, namespace=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["a", "app-1.prod_v2", "x" * 64])
def test_good_namespace_is_accepted(good: str) -> None:
    assert CacheConfig(url=URL, namespace=good).namespace == good


@pytest.mark.parametrize(
    "bad",
    ["", "localhost:6379", "127.0.0.1", None, 6379, b"redis://127.0.0.1:1/0",
     "http://127.0.0.1:1/0", "ftp://127.0.0.1/"],
    ids=repr,
)
def test_bad_url_raises_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        CacheConfig(url=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "good",
    ["redis://127.0.0.1:1/0", "rediss://user:pw@127.0.0.1:1/2", "unix:///tmp/redis.sock"],
)
def test_good_urls_are_accepted(good: str) -> None:
    assert CacheConfig(url=good).url == good


def test_fleetcache_options_are_validated_at_construction() -> None:
    with pytest.raises(ConfigError):
        FleetCache.from_url(URL, l1_ttl=-1)
    with pytest.raises(ConfigError):
        FleetCache(CacheConfig(url=URL), namespace="bad namespace")


# -- from_env --------------------------------------------------------------------------------


def test_from_env_prefers_fleetcache_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCACHE_REDIS_URL", "redis://127.0.0.1:2/1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:3/2")
    assert CacheConfig.from_env().url == "redis://127.0.0.1:2/1"


def test_from_env_falls_back_to_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:3/2")
    assert CacheConfig.from_env().url == "redis://127.0.0.1:3/2"


def test_from_env_empty_fleetcache_url_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCACHE_REDIS_URL", "")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:3/2")
    assert CacheConfig.from_env().url == "redis://127.0.0.1:3/2"


def test_from_env_without_env_uses_the_default() -> None:
    assert CacheConfig.from_env().url == DEFAULT_URL


def test_from_env_passes_overrides_and_explicit_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:3/2")
    config = CacheConfig.from_env(namespace="other", l1_ttl=5)
    assert (config.url, config.namespace, config.l1_ttl) == ("redis://127.0.0.1:3/2", "other", 5)
    assert CacheConfig.from_env(url=URL).url == URL


def test_from_env_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "not-a-url")
    with pytest.raises(ConfigError):
        CacheConfig.from_env()


# -- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://user:s3cretpw@127.0.0.1:1/0", "s3cretpw"),
        ("redis://:s3cretpw@127.0.0.1:1/0", "s3cretpw"),
        ("rediss://default:s3cretpw@cache.example:6380", "s3cretpw"),
        ("redis://127.0.0.1:1/0?password=s3cretpw", "s3cretpw"),
        ("redis://127.0.0.1:1/0?db=1&password=s3cretpw&ssl=0", "s3cretpw"),
        ("unix:///tmp/redis.sock?password=s3cretpw&db=0", "s3cretpw"),
        ("redis://user:s3cretpw@127.0.0.1:1/0?password=0th3rpw", "0th3rpw"),
    ],
)
def test_redact_url_hides_the_password(url: str, secret: str) -> None:
    redacted = redact_url(url)
    assert "s3cretpw" not in redacted
    assert secret not in redacted
    assert "***" in redacted


def test_redact_url_keeps_what_is_not_secret() -> None:
    assert redact_url("redis://user:pw@cache.example:6380/3") == "redis://user:***@cache.example:6380/3"
    assert redact_url("redis://127.0.0.1:1/0?db=1&password=pw&ssl=0") == (
        "redis://127.0.0.1:1/0?db=1&password=***&ssl=0"
    )
    assert redact_url("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"


def test_redact_url_hides_a_password_containing_at_sign() -> None:
    # redis-py (urllib.parse) splits user info at the LAST "@": the password is "p@ss-tail".
    redacted = redact_url("redis://user:p@ss-tail@127.0.0.1:1/0")
    assert "ss-tail" not in redacted
    assert "127.0.0.1:1/0" in redacted


def test_safe_url_is_redacted() -> None:
    assert "pw123" not in CacheConfig(url="redis://u:pw123@127.0.0.1:1/0").safe_url


@pytest.mark.parametrize(
    "url",
    ["redis://user:pw-Secret-9@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=pw-Secret-9"],
)
def test_reprs_never_contain_the_password(url: str) -> None:
    config = CacheConfig(url=url, namespace="reprtest")
    assert "pw-Secret-9" not in repr(config)
    assert "pw-Secret-9" not in str(config)
    assert "reprtest" in repr(config)
    cache = FleetCache(config)
    try:
        assert "pw-Secret-9" not in repr(cache)
        assert "pw-Secret-9" not in str(cache)
        assert "127.0.0.1:1" in repr(cache)
    finally:
        cache.close()


def test_config_errors_do_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig(url="redis://u:pw-Secret-9@127.0.0.1:1/0", l1_ttl=-1)
    assert "pw-Secret-9" not in str(info.value)


# -- strategies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "name", "ttl"),
    [
        (CacheStrategy.REAL_TIME, "REAL_TIME", 10),
        (CacheStrategy.SHORT_TERM, "SHORT_TERM", 300),
        (CacheStrategy.MEDIUM_TERM, "MEDIUM_TERM", 3600),
        (CacheStrategy.LONG_TERM, "LONG_TERM", 10800),
    ],
)
def test_strategy_presets(strategy: CacheStrategy, name: str, ttl: float) -> None:
    assert strategy.ttl == ttl
    assert strategy.name == name


def test_custom_strategy() -> None:
    strategy = CacheStrategy.custom(42.5)
    assert strategy.ttl == 42.5
    assert strategy == CacheStrategy.custom(42.5)
    assert strategy != CacheStrategy.custom(43)


@pytest.mark.parametrize(
    "bad", [0, -1, math.nan, math.inf, True, "10", None, 10**12], ids=repr
)
def test_invalid_custom_ttl_raises(bad: object) -> None:
    with pytest.raises(InvalidArgumentError):
        CacheStrategy.custom(bad)  # type: ignore[arg-type]


def test_strategy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CacheStrategy.REAL_TIME.ttl = 1  # type: ignore[misc]
