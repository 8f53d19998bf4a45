"""Fleet-wide L1 invalidation over pub/sub, between two caches acting as two workers.

Each FleetCache has its own sender id, listener and L1, so two instances in one process
behave like two processes for everything tested here.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fleetcache import BackendError, FleetCache
from fleetcache.testing import l1_entry, l1_lease, l1_size, l1_version

from ..faults import l2_replaced, lapse_lease
from ..helpers import run_threads
from ..servers import Server
from ..waiting import wait_until

MakeCache = Callable[..., FleetCache]
NOTICE_DEADLINE = 2.0  # how long a notice may take to reach another instance


def set_quietly(writer: FleetCache, reader: FleetCache, key: str, value: Any) -> None:
    """Write, then wait until ``reader`` applied the notice (so it cannot race later reads)."""
    before = reader.stats().invalidations_received
    writer.set(key, value)
    assert wait_until(lambda: reader.stats().invalidations_received > before)


def warm(cache: FleetCache, key: str, expected: Any) -> None:
    """Read ``key`` until it is an L1 hit in ``cache``."""
    assert cache.get(key) == expected
    hits = cache.stats().l1_hits
    assert cache.get(key) == expected
    assert cache.stats().l1_hits == hits + 1, "not promoted into L1"


class RacingStore:
    """Wraps a RedisStore; ``hook(method, key_or_keys)`` runs after a read, before returning."""

    def __init__(self, real: Any, hook: Callable[[str, Any], None]) -> None:
        self._real = real
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get(self, key: str) -> bytes | None:
        blob = self._real.get(key)
        self._hook("get", key)
        return blob  # type: ignore[no-any-return]

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        blobs = self._real.get_many(keys)
        self._hook("get_many", keys)
        return blobs  # type: ignore[no-any-return]

    def get_many_versioned(self, keys: list[str]) -> tuple[list[bytes | None], int]:
        found = self._real.get_many_versioned(keys)
        self._hook("get_many_versioned", keys)
        return found  # type: ignore[no-any-return]

    def fetch_or_lock(self, key: str, lock: Any) -> tuple[bytes | None, bool]:
        found = self._real.fetch_or_lock(key, lock)
        self._hook("fetch_or_lock", key)
        return found  # type: ignore[no-any-return]


# -- plain notices --------------------------------------------------------------------------


def test_set_on_a_drops_the_key_from_b_l1(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    set_quietly(a, b, "k", "old")
    warm(b, "k", "old")

    a.set("k", "new")
    assert wait_until(lambda: b.get("k") == "new"), "B kept serving its stale L1 entry"
    assert a.stats().invalidations_sent == 2


def test_delete_on_a_drops_the_key_from_b_l1(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    set_quietly(a, b, "k", "old")
    warm(b, "k", "old")

    assert a.delete("k") is True
    assert wait_until(lambda: b.get("k", "gone") == "gone"), "B kept serving a deleted key"
    assert a.delete("k") is False  # already gone from L2


def test_own_notices_do_not_flush_own_l1(pair: tuple[FleetCache, FleetCache]) -> None:
    a, b = pair
    a.set("k", "v")
    # A fence: one channel delivers in order, so once A has applied B's notice it has
    # seen its own earlier one too.
    b.set("fence", 1)
    assert wait_until(lambda: a.stats().invalidations_received >= 1)
    assert a.get("k") == "v"
    s = a.stats()
    assert s.l1_hits == 1  # A's own write is in its L1 and its own notice did not drop it
    assert s.invalidations_received == 1  # B's fence only


def test_clear_flushes_other_instances_and_only_this_namespace(
    pair: tuple[FleetCache, FleetCache], make_cache: MakeCache, namespace: str
) -> None:
    a, b = pair
    other = make_cache(namespace=namespace + "-other")
    other.set("k0", "kept")
    for i in range(3):
        set_quietly(a, b, f"k{i}", i)
        warm(b, f"k{i}", i)

    assert a.clear() == 3
    assert wait_until(
        lambda: b.get_many(["k0", "k1", "k2"]) == {}
    ), "B's L1 survived clear() on A"
    assert a.get_many(["k0", "k1", "k2"]) == {}
    assert other.get("k0") == "kept"
    assert b.stats().invalidations_received >= 4  # three sets and the flush


# -- read-during-invalidate -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "get_many", "get_or_compute"])
def test_invalidation_landing_during_an_l2_read_is_not_undone(
    pair: tuple[FleetCache, FleetCache], method: str
) -> None:
    """B's GET returns the old value, and A's notice is applied before B stores it in L1."""
    a, b = pair
    set_quietly(a, b, "k", "old")
    raced: list[bool] = []

    def hook(called: str, _: Any) -> None:
        if raced:
            return
        raced.append(True)
        seq = l1_version(b)
        before = b.stats().invalidations_received
        a.set("k", "new")  # the GET already has "old" in hand
        assert wait_until(lambda: b.stats().invalidations_received > before)
        assert wait_until(lambda: l1_version(b) != seq), "B's L1 never applied the notice"

    with l2_replaced(b, lambda real: RacingStore(real, hook)):
        if method == "get":
            got = b.get("k")
        elif method == "get_many":
            got = b.get_many(["k"])["k"]
        else:
            got = b.get_or_compute("k", lambda: "computed")
    assert raced, "the read never reached L2"
    assert got == "old"  # linearizable: the read happened before the write
    assert b.stats().promotions == 0

    hits = b.stats().l1_hits
    assert b.get("k") == "new", "the old value was promoted after its invalidation"
    assert b.stats().l1_hits == hits


@pytest.mark.parametrize("writer_op", ["set", "delete"])
def test_in_process_write_during_an_l2_read_is_not_undone(
    pair: tuple[FleetCache, FleetCache], writer_op: str
) -> None:
    """T1 holds the old L2 value while T2 (same cache) writes; T1 must not store it."""
    a, b = pair
    set_quietly(a, b, "k", "old")
    fetched, written = threading.Event(), threading.Event()
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def hook(called: str, _: Any) -> None:
        if threading.current_thread().name == "T1":
            fetched.set()
            assert written.wait(2.0), "T2 never wrote"

    def t1() -> None:
        try:
            results["t1"] = b.get("k")
        except BaseException as exc:
            errors.append(exc)

    def t2() -> None:
        try:
            assert fetched.wait(2.0)
            if writer_op == "set":
                b.set("k", "new")
            else:
                b.delete("k")
        except BaseException as exc:
            errors.append(exc)
        finally:
            written.set()

    with l2_replaced(b, lambda real: RacingStore(real, hook)):
        threads = run_threads([threading.Thread(target=t1, name="T1"),
                               threading.Thread(target=t2, name="T2")], 5.0)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert results["t1"] == "old"
    expected = "new" if writer_op == "set" else "gone"
    assert b.get("k", "gone") == expected, "T1's stale read overwrote T2's write in L1"
    # A hears of B's write through the bus: allow the notice its delivery time.
    assert wait_until(lambda: a.get("k", "gone") == expected)


# -- missed notices -------------------------------------------------------------------------


def test_killed_pubsub_connection_replays_what_it_missed_and_keeps_l1(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis
) -> None:
    a, b = pair
    set_quietly(a, b, "k", "v1")
    set_quietly(a, b, "untouched", "u")
    warm(b, "k", "v1")
    warm(b, "untouched", "u")

    killed = raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 2  # A's and B's listeners
    a.set("k", "v2")  # may land in B's gap: B must not rely on hearing it
    assert wait_until(lambda: b.stats().reconnects >= 1, 3.0), "B never noticed the kill"
    assert wait_until(lambda: b.health().bus_connected, 3.0), "B did not resubscribe"

    assert b.get("k") == "v2"
    hits = b.stats().l1_hits
    assert b.get("untouched") == "u"
    assert b.stats().l1_hits == hits + 1, "the replay should have kept the untouched entry"
    stats = b.stats()
    assert stats.replays >= 1 and stats.l1_flushes == 0, stats

    # Resubscribed for real: a later notice reaches B again.
    warm(b, "k", "v2")
    a.set("k", "v3")
    assert wait_until(lambda: b.get("k") == "v3"), "B is deaf after resubscribing"


def test_server_restart_flushes_l1_and_serves_fresh_values(own_server: Server) -> None:
    ns = "t" + uuid.uuid4().hex[:12]
    a = FleetCache.from_url(own_server.url, namespace=ns)
    b = FleetCache.from_url(own_server.url, namespace=ns)
    try:
        assert a.connect(wait=5.0) and b.connect(wait=5.0)
        set_quietly(a, b, "k", "old")
        set_quietly(a, b, "other", "x")
        warm(b, "k", "old")
        warm(b, "other", "x")

        own_server.restart()  # data gone; B's listener loses its connection
        deadline = time.monotonic() + 5.0
        while True:  # the write right after the restart, likely before B resubscribed
            try:
                a.set("k", "new")
                break
            except BackendError:
                assert time.monotonic() < deadline, "A cannot write after the restart"
                time.sleep(0.05)

        # redis-py may reconnect silently: the resubscribe confirmation is the only sign.
        assert wait_until(lambda: b.stats().reconnects >= 1, 5.0), "B never resubscribed"
        assert wait_until(lambda: b.health().bus_connected, 5.0), "B's bus stayed down"
        assert b.get("other", "flushed") == "flushed", "B's L1 survived the restart"
        assert b.get("k") == "new"

        warm(b, "k", "new")
        a.set("k", "newer")
        assert wait_until(lambda: b.get("k") == "newer"), "B is deaf after the restart"
    finally:
        a.close()
        b.close()


def test_l1_entries_stored_while_the_bus_is_down_live_degraded_l1_ttl(
    make_cache: MakeCache, server: Server, raw: redis.Redis, namespace: str
) -> None:
    """A worker whose listener cannot subscribe (ACL without channels) while L2 works."""
    user = "nobus" + uuid.uuid4().hex[:8]
    raw.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "resetchannels", "+@all")
    degraded = 0.3
    c = FleetCache.from_url(f"redis://{user}:pw@127.0.0.1:{server.port}/0",
                            namespace=namespace, degraded_l1_ttl=degraded)
    try:
        a = make_cache()
        assert a.connect(wait=5.0)
        assert not c.connect(wait=0.3)
        health = c.health()
        assert health.redis_ok and not health.bus_connected

        a.set("k", "old")
        # The listener's retries flush L1 now and then: promote until we see the entry.
        entry = None
        for _ in range(50):
            promoted_at = time.monotonic()
            assert c.get("k") == "old"
            entry = l1_entry(c, "k")
            if entry is not None:
                break
        assert entry is not None, "nothing was ever stored in L1 while the bus was down"
        life = entry[1] - time.monotonic()
        assert life <= degraded, f"L1 entry lives {life:.1f} s, degraded_l1_ttl is {degraded}"

        a.set("k", "new")  # C cannot hear this
        assert wait_until(lambda: c.get("k") == "new", degraded + 1.0)
        assert time.monotonic() - promoted_at <= degraded + 0.3
    finally:
        c.close()
        raw.execute_command("ACL", "DELUSER", user)


# -- unreadable notices -----------------------------------------------------------------------


def test_unreadable_notice_flushes_l1_and_logs_sparingly(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A message B cannot decode (another version mid-deploy, a stray publisher) may have
    been an invalidation: B drops its L1 rather than serve what it may have invalidated."""
    a, b = pair
    set_quietly(a, b, "k", "v")
    warm(b, "k", "v")
    channel = b.keys.channel
    with caplog.at_level(logging.WARNING, logger="fleetcache"):
        for _ in range(5):
            raw.publish(channel, b"\xc1 not msgpack")
        assert wait_until(lambda: l1_size(b) == 0), "B kept its L1 after an unreadable notice"
        assert wait_until(lambda: sum("unreadable message" in r.getMessage()
                                      for r in caplog.records) >= 6)
    time.sleep(0.1)
    # 5 messages, logged at the 1st, 2nd and 4th only, by each of A's and B's listeners
    assert sum("unreadable message" in r.getMessage() for r in caplog.records) == 2 * 3
    assert b.get("k") == "v"  # from L2 again
    assert b.connect()


def test_the_idle_listener_keeps_renewing_l1s_lease(cache: FleetCache) -> None:
    """Nothing to hear is not a starved listener: the lease stays ahead of the clock
    (renewed by the reads themselves while the listener sleeps)."""
    lag = cache.config.max_listener_lag
    cache.set("k", 1)
    seen = set()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        until = l1_lease(cache)
        assert until - time.monotonic() <= lag
        seen.add(until)
        assert cache.get("k") == 1
        time.sleep(lag / 5)
    assert len(seen) >= 5  # renewed each time it ran out, not just once
    assert cache.stats().l1_hits > 0
    # Nothing to apply: reads renewed it themselves (one may have met a watchdog PONG in
    # the listener's hands, and waited for it).
    assert cache.stats().listener_waits <= 1


def test_a_read_renews_the_lease_only_when_the_listener_has_nothing_to_apply(
    cache: FleetCache,
) -> None:
    """The reader's renewal is refused while a notice is in the listener's socket or in
    its hands; granted when the socket is empty and the listener idle."""
    cache.set("k", 1)
    bus = cache._tiers.process().bus
    assert wait_until(lambda: bus._drained is not None, 2)  # the listener sleeps
    lag = cache.config.max_listener_lag
    waits = cache.stats().listener_waits
    for _ in range(3):
        time.sleep(lag * 1.5)  # the lease runs out while the listener sleeps
        assert cache.get("k") == 1
    # renewed by the reads themselves (one may have met a watchdog PONG being read)
    assert cache.stats().listener_waits - waits <= 1
    bus.stop()  # from here on the test plays the listener
    reader, writer = socket.socketpair()
    try:
        bus._drained = reader
        writer.send(b"*3\r\n")  # a notice has arrived, unread
        assert not bus.renew_if_drained()
        reader.recv(16)  # read, not yet applied: the listener is busy
        bus._drained = None
        assert not bus.renew_if_drained()
        bus._drained = reader  # applied, and nothing more came
        before = l1_lease(cache)
        assert bus.renew_if_drained()
        assert l1_lease(cache) > before
    finally:
        bus._drained = None
        reader.close()
        writer.close()


def test_a_down_bus_lifts_the_lease(own_server: Server) -> None:
    """With no listener, degraded_l1_ttl bounds L1 instead: the lease must not also block it
    (else every read during an outage would recompute)."""
    cache = FleetCache.from_url(own_server.url, namespace="lease")
    try:
        assert cache.connect(wait=5.0)
        assert l1_lease(cache) != math.inf
        own_server.kill()
        deadline = time.monotonic() + 5
        while l1_lease(cache) != math.inf and time.monotonic() < deadline:
            time.sleep(0.01)
        assert l1_lease(cache) == math.inf
        assert cache.get_or_compute("k", lambda: "computed") == "computed"
        assert cache.get_or_compute("k", lambda: "again") == "computed"  # L1, degraded
    finally:
        cache.close()


def test_get_many_waits_for_a_late_listener_only_for_keys_it_holds(cache: FleetCache) -> None:
    """Cold keys go straight to Redis: only a live L1 entry is worth waiting for."""
    cache.set("held", 1)
    lapse_lease(cache)  # as if the listener had fallen behind
    assert cache.get_many(["cold1", "cold2"]) == {}
    assert cache.stats().listener_waits == 0
    lapse_lease(cache)
    assert cache.get_many(["held", "cold1"]) == {"held": 1}
    assert cache.stats().listener_waits == 1  # one wait for the held key, then a fresh lease
