"""Redis down, stalled, or refusing our password: reads degrade, writes fail fast and clearly."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from fleetcache import (
    BackendError,
    BackendUnavailableError,
    FleetCache,
    FleetCacheError,
)

from ..helpers import timed
from ..servers import Server, binaries
from ..waiting import wait_until

BOUND = 1.5  # no cache call may take longer than this while Redis is sick


def assert_reads_degrade(cache: FleetCache) -> None:
    errors = cache.stats().redis_errors
    for fn, expected in [
        (lambda: cache.get("cold", "dflt"), "dflt"),
        (lambda: cache.get("cold"), None),
        (lambda: cache.get_many(["cold", "colder"]), {}),
        (lambda: cache.get_or_compute("gc", lambda: "computed"), "computed"),
    ]:
        result, took = timed(fn)
        assert result == expected
        assert took < BOUND, f"a read took {took:.2f} s"
    assert cache.stats().redis_errors >= errors + 4
    health, took = timed(cache.health)
    assert took < BOUND
    assert not health.redis_ok and not health.ok and health.error


def assert_writes_fail_fast(cache: FleetCache, error: type[BaseException]) -> None:
    for fn in (lambda: cache.set("w", 1), lambda: cache.delete("w"), cache.clear):
        exc, took = timed(fn)
        assert isinstance(exc, error), f"expected {error.__name__}, got {exc!r}"
        assert isinstance(exc, FleetCacheError)
        assert took < BOUND, f"a write took {took:.2f} s to fail"


def test_killed_server(own_server: Server, caches: Callable[..., FleetCache]) -> None:
    cache = caches(own_server.url)
    other = caches(own_server.url)
    assert cache.connect(wait=5.0) and other.connect(wait=5.0)
    cache.set("k", "v")
    assert cache.get("k") == "v"

    own_server.kill()
    assert wait_until(lambda: not cache.health().bus_connected, 2.0), "bus missed the crash"
    assert cache.get("k", "flushed") == "flushed", "L1 not flushed when the bus went down"
    assert_reads_degrade(cache)
    assert_writes_fail_fast(cache, BackendUnavailableError)

    own_server.start()
    assert wait_until(lambda: cache.health().ok, 5.0), "no recovery after the restart"
    assert wait_until(lambda: other.health().ok, 5.0)
    cache.set("k", "back")
    assert cache.get("k") == "back"
    assert wait_until(lambda: other.get("k") == "back", 2.0)
    assert cache.delete("k") is True
    assert wait_until(lambda: other.get("k", "gone") == "gone", 2.0)
    assert cache.get_or_compute("fresh", lambda: 7) == 7
    assert other.get("fresh") == 7  # stored in L2 again, not only in L1


def test_losing_the_bus_is_logged(
    own_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture
) -> None:
    """Operators learn from the log that L1 was flushed because the bus went down."""
    caplog.set_level(logging.WARNING, logger="fleetcache")
    cache = caches(own_server.url)
    assert cache.connect(wait=5.0)
    own_server.kill()
    assert wait_until(lambda: not cache.connect(), 2.0)

    def logged_down() -> bool:
        return any(r.name == "fleetcache" and "bus down" in r.getMessage()
                   for r in caplog.records)

    assert wait_until(logged_down, 1.0), [r.getMessage() for r in caplog.records]


def test_cache_made_while_redis_is_down_starts_working_when_it_comes_up(
    own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    own_server.kill()
    cache = caches(own_server.url)
    assert not cache.connect(wait=0.3)
    assert_reads_degrade(cache)
    assert_writes_fail_fast(cache, BackendUnavailableError)
    own_server.start()
    assert wait_until(lambda: cache.health().ok, 5.0)
    cache.set("k", "v")
    assert caches(own_server.url).get("k") == "v"


@pytest.mark.slow
def test_paused_server(own_server: Server, caches: Callable[..., FleetCache]) -> None:
    interval, timeout = 0.5, 0.3
    cache = caches(own_server.url, health_check_interval=interval,
                   health_check_timeout=timeout)
    other = caches(own_server.url)
    assert cache.connect(wait=5.0) and other.connect(wait=5.0)
    cache.set("k", "v")
    assert cache.get("k") == "v"
    assert cache.stats().l1_hits == 1

    threads_before = threading.active_count()
    own_server.pause()
    try:
        paused_at = time.monotonic()
        exc, took = timed(lambda: cache.set("x", 1))
        assert isinstance(exc, BackendError), exc
        assert took < BOUND
        result, took = timed(lambda: cache.get("cold", "dflt"))
        assert result == "dflt" and took < BOUND

        # The watchdog's PING gets no PONG: the bus is declared down and L1 flushed.
        def bus_down() -> bool:
            return not cache.connect()

        assert wait_until(bus_down, interval + timeout + 1.0 - (time.monotonic() - paused_at))
        assert not cache.health().bus_connected
        result, took = timed(lambda: cache.get("k", "flushed"))
        assert result == "flushed", "stale L1 entry served after the bus went down"
        assert took < BOUND
        assert_reads_degrade(cache)
        assert_writes_fail_fast(cache, BackendError)
    finally:
        own_server.resume()

    assert wait_until(lambda: cache.health().ok, 5.0), "no recovery after SIGCONT"
    assert cache.get("k") == "v"
    cache.set("k", "v2")
    assert wait_until(lambda: other.get("k") == "v2", 2.0)
    other.set("k", "v3")
    assert wait_until(lambda: cache.get("k") == "v3", 2.0), "bus deaf after the stall"
    # Nothing piled up while the server was stopped (pottery's executor threads are gone too).
    assert wait_until(lambda: threading.active_count() <= threads_before, 3.0), (
        f"{threading.active_count()} threads alive, {threads_before} before the pause"
    )


# -- authentication -------------------------------------------------------------------------

RIGHT = "s3cret"
WRONG = "Wr0ngPa55-" + uuid.uuid4().hex[:6]


@pytest.fixture(params=sorted(binaries()))
def auth_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(binaries()[request.param], extra=("--requirepass", RIGHT)).start()
    yield srv
    srv.stop()


def texts_of(exc: BaseException) -> list[str]:
    """str and repr of an exception and of everything chained to it."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return out


@pytest.mark.parametrize(
    ("userinfo", "secret"),
    [(f":{WRONG}", WRONG), (f"default:{WRONG}", WRONG), ("", None)],
    ids=["wrong-password", "wrong-password-with-user", "no-password"],
)
def test_bad_credentials_fail_clearly_without_leaking_the_password(
    auth_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture,
    userinfo: str, secret: str | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    at = "@" if userinfo else ""
    cache = caches(f"redis://{userinfo}{at}127.0.0.1:{auth_server.port}/0")

    exc, took = timed(lambda: cache.set("k", "v"))
    assert isinstance(exc, FleetCacheError), exc
    assert took < BOUND
    assert re.search(r"auth|password", str(exc), re.IGNORECASE), f"unclear: {exc}"
    assert cache.get("k", "dflt") == "dflt"  # reads still degrade to a miss
    assert not cache.connect(wait=0.3)
    health = cache.health()
    assert not health.redis_ok and health.error

    texts = [*texts_of(exc), repr(cache), repr(cache.config), str(cache.config.safe_url),
             str(health), health.error or ""]
    formatter = logging.Formatter()
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    assert any(r.name == "fleetcache" for r in caplog.records), "nothing logged the failure"
    for secret_text in filter(None, [secret, RIGHT]):
        leaks = [t for t in texts if secret_text in t]
        assert not leaks, f"password leaked: {leaks[:3]}"


def test_right_password_works_and_is_not_shown(
    auth_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://:{RIGHT}@127.0.0.1:{auth_server.port}/0"
    a, b = caches(url), caches(url)
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    assert a.health().ok
    a.set("k", "v")
    assert b.get("k") == "v"
    a.set("k", "v2")
    assert wait_until(lambda: b.get("k") == "v2", 2.0)
    for text in [repr(a), repr(a.config), a.config.safe_url,
                 *(r.getMessage() for r in caplog.records)]:
        assert RIGHT not in text


def test_a_bus_that_never_comes_up_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fleetcache")
    cache = FleetCache.from_url("redis://:hunter2-secret@127.0.0.1:1/0", namespace="never",
                                reconnect_backoff=0.05)
    try:
        assert cache.get("k", "default") == "default"
        assert wait_until(lambda: any("cannot subscribe" in r.getMessage()
                                      for r in caplog.records), 3.0)
        time.sleep(0.3)  # several more failed attempts
        never = [r for r in caplog.records if "cannot subscribe" in r.getMessage()]
        assert len(never) == 1
        assert all("hunter2" not in r.getMessage() for r in caplog.records)
        assert not cache.health().bus_connected
    finally:
        cache.close()
