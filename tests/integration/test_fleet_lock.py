"""FleetLock: pottery's Redlock, taken and released inside the cache's own scripts.

It must stay a real pottery lock (same key, token and compare-and-delete release, so stock
pottery clients exclude it and are excluded), start no thread, and keep a cold miss to two
round trips: fetch-or-lock (and open the fill's lease); store-release-announce.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from pottery import Redlock

from fleetcache import FleetCache
from fleetcache.core.protocols import FillOutcome
from fleetcache.redis.keys import KeyLayout
from fleetcache.redis.lane import CommandLane
from fleetcache.redis.locks import FleetLock, new_token
from fleetcache.redis.store import RedisStore

from ..servers import Server


@pytest.fixture
def client(server: Server) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(server.url)
    yield c
    c.close()


def store_on(client: redis.Redis, namespace: str) -> RedisStore:
    return RedisStore(client, KeyLayout(namespace), CommandLane(client.connection_pool, keep=2),
                      fill_lease_ms=60_000)


def take(lock: FleetLock, client: redis.Redis, key: str = "k") -> bool:
    """Try ``lock`` the way get_or_compute does (on a namespace-free store)."""
    value, won = store_on(client, "fl").fetch_or_lock(key, lock)
    assert value is None
    return won


def test_excludes_and_is_excluded_by_stock_pottery(client: redis.Redis, namespace: str) -> None:
    name = f"{namespace}:res"
    ours = FleetLock(client, name, 5)
    assert take(ours, client, namespace)
    assert ours.key == f"redlock:{name}"
    assert 0 < ours.locked() <= 5  # pottery's own locked() reads our token
    stock = Redlock(key=name, masters={client}, auto_release_time=5)
    assert not stock.acquire(blocking=False)
    ours.release()
    assert stock.acquire(blocking=False)
    assert not take(FleetLock(client, name, 5), client, namespace)
    stock.release()


def test_store_fill_releases_only_its_own_token(
    client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_on(client, "fl")  # the store take() used: the fills' leases are there
    name = f"{namespace}:res"
    first = FleetLock(client, name, 0.05)
    assert take(first, client, namespace)
    time.sleep(0.1)  # expired: another holder takes over
    second = FleetLock(client, name, 5)
    assert take(second, client, namespace)
    with caplog.at_level(logging.WARNING, logger="fleetcache"):
        # first's lease is live (no write since): a slow fill still stores
        assert store.store_fill(namespace, b"v1", 5000, first, b"notice")[0] is FillOutcome.STORED
    assert "it had expired" in caplog.text
    assert second.locked() > 0  # the late release left the new holder's lock alone
    assert store.store_fill(namespace, b"v2", 5000, second, b"notice")[0] is FillOutcome.BEATEN
    assert not client.exists(second.key)  # but the lock is released
    assert client.get(store.keys.value(namespace)) == b"v1"


def test_every_stored_fill_is_announced(client: redis.Redis, namespace: str) -> None:
    """A fill's notice invalidates other L1s too: the value it replaces may have vanished
    from L2 without a notice (FLUSHDB, eviction) while another worker still holds it."""
    store = store_on(client, namespace)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.keys.channel)
    winner = FleetLock(client, f"{namespace}:a", 5)
    assert store.fetch_or_lock("a", winner) == (None, True)
    assert store.store_fill("a", b"v", 5000, winner, b"nobody waits")[0] is FillOutcome.STORED
    loser = FleetLock(client, f"{namespace}:b", 5)
    winner = FleetLock(client, f"{namespace}:b", 5)
    assert store.fetch_or_lock("b", winner) == (None, True)
    assert store.fetch_or_lock("b", loser) == (None, False)
    assert store.store_fill("b", b"v", 5000, winner, b"someone waits")[0] is FillOutcome.STORED
    assert store.fetch_or_lock("b", FleetLock(client, f"{namespace}:b", 5)) == (b"v", False)
    messages = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(messages) < 2:
        message = pubsub.get_message(timeout=0.1)
        if message:
            messages.append(message["data"])
    # "<log id>|<notice>": this store keeps no replay log, so the id is empty
    assert messages == [b"|nobody waits", b"|someone waits"]
    pubsub.close()


def test_late_release_is_logged_and_spares_a_later_holder(
    client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"{namespace}:res"
    first = FleetLock(client, name, 0.05)
    assert take(first, client, namespace)
    time.sleep(0.1)
    second = FleetLock(client, name, 5)
    assert take(second, client, namespace)
    with caplog.at_level(logging.WARNING, logger="fleetcache"):
        first.release()
    assert "it had expired" in caplog.text
    assert second.locked() > 0
    second.release()


def test_release_with_redis_gone_is_logged(
    own_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(own_server.url, socket_timeout=0.5)
    lock = FleetLock(client, "res", 5)
    assert take(lock, client)
    own_server.stop()
    with caplog.at_level(logging.WARNING, logger="fleetcache"):
        lock.release()  # does not raise: the lock expires by itself
    assert "Redis down" in caplog.text
    client.close()


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in client.info("commandstats").items()}


def test_cold_miss_takes_two_round_trips_and_no_thread(own_server: Server) -> None:
    """A script that finds no value and takes the lock; one that stores and releases."""
    # No watchdog beat inside the measured call: its epoch check is a script of its own.
    cache = FleetCache.from_url(own_server.url, namespace="rt", health_check_interval=60,
                                stats_interval=0)  # no fleet-view report either
    assert cache.connect(wait=5)
    assert cache.get_or_compute("warm", lambda: "v") == "v"  # loads the scripts
    admin = redis.Redis.from_url(own_server.url)
    admin.config_resetstat()
    started: list[threading.Thread] = []
    original_start = threading.Thread.start

    def spy(thread: threading.Thread) -> None:
        started.append(thread)
        original_start(thread)

    threading.Thread.start = spy  # type: ignore[method-assign]
    try:
        assert cache.get_or_compute("k", lambda: "v") == "v"
    finally:
        threading.Thread.start = original_start  # type: ignore[method-assign]
    calls = _commandstats(admin)
    for admin_command in ("config|resetstat", "info", "ping"):  # ping: the bus watchdog
        calls.pop(admin_command, None)
    # Inside the scripts: GET value, SET lock, SADD+PEXPIRE lease; GET+DEL lock, SREM lease,
    # EXISTS value, SET value, and the notice: XADD to the replay log, XTRIM for its age
    # bound, SET of the namespace's position, PUBLISH.
    assert calls == {"evalsha": 2, "get": 2, "set": 3, "sadd": 1, "pexpire": 1, "del": 1,
                     "srem": 1, "exists": 1, "xadd": 1, "xtrim": 1, "publish": 1}
    assert started == []
    assert not admin.exists("redlock:rt:lock:k")
    admin.close()
    cache.close()


def test_tokens_are_unique_and_a_forked_child_draws_its_own() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next token and leave at once
        os.write(write, new_token().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    ours = new_token()
    assert child.rsplit("-", 1)[0] != ours.rsplit("-", 1)[0]
    assert child not in tokens | {ours}
