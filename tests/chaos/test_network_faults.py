"""Network faults between fleetcache and Redis, injected by a proxy (see :mod:`.proxy`).

What is promised (README, "Consistency and outages"): reads never raise and degrade to a
miss in bounded time; writes succeed or raise ``BackendError``; every gap in the
invalidation bus suspends L1 until the missed notices are replayed (test_replay.py covers
the replay, and the flushes where it cannot be); a silently dead bus is found by the PING
watchdog; and a worker serves an invalidated value for at most
``max(health_check_interval + health_check_timeout, degraded_l1_ttl)`` after the
invalidation. Each test measures the number it is about and names it in its messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import pytest
import redis

from fleetcache import BackendError, FleetCache
from fleetcache.testing import connections

from ..helpers import timed
from ..integration.procs import ABSENT, hold
from ..servers import Server
from .conftest import assert_no_new_threads, wait_until
from .proxy import Proxy, Scope

pytestmark = pytest.mark.slow

monotonic = time.monotonic

# Scheduling slack on top of documented bounds: the box has 2 cores shared with other jobs.
SLACK = 0.5
CALL_BOUND = 1.0  # no single cache call may take longer while the link is sick


def staleness_bound(cache: FleetCache) -> float:
    """The README's bound for serving an invalidated value."""
    c = cache.config
    return max(c.health_check_interval + c.health_check_timeout, c.degraded_l1_ttl)


def served_from_l1(cache: FleetCache, key: str) -> bool:
    """Whether one get() of ``key`` is an L1 hit (the get itself is the probe)."""
    before = cache.stats().l1_hits
    cache.get(key, ABSENT)
    return cache.stats().l1_hits == before + 1


class Hammer:
    """A thread looping get (of known values) and set on one cache until stopped."""

    def __init__(self, cache: FleetCache, values: int = 16) -> None:
        self.cache = cache
        self.values = values
        self.log: list[tuple[float, str, bool]] = []  # (started_at, op, succeeded)
        self.unexpected: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-hammer", daemon=True)

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "the hammer thread is stuck in a cache call"

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            key = f"r{i % self.values}"
            start = monotonic()
            try:
                value = self.cache.get(key, ABSENT)
            except Exception as exc:  # reads must never raise
                self.unexpected.append(f"get raised {exc!r}")
                continue
            if value == ABSENT:
                self.log.append((start, "get", False))  # degraded to a miss: allowed
            elif value != i % self.values:
                self.unexpected.append(f"get({key!r}) returned {value!r}")
            else:
                self.log.append((start, "get", True))
            start = monotonic()
            try:
                self.cache.set(f"w{i % 8}", i)
                self.log.append((start, "set", True))
            except BackendError:
                self.log.append((start, "set", False))  # allowed: the fleet could not be told
            except Exception as exc:
                self.unexpected.append(f"set raised {exc!r}")

    def recovered_since(self, since: float) -> bool:
        """A get and a set, both started after ``since``, succeeded."""
        return {op for t, op, good in list(self.log) if t > since and good} == {"get", "set"}

    def failed_since(self, since: float) -> int:
        return sum(1 for t, _, good in list(self.log) if t > since and not good)


def test_connection_reset_mid_command(
    proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    """RST on every connection while a thread hammers get/set through the proxy."""
    baseline = set(threading.enumerate())
    other = caches(own_server.url)
    worker_cache = caches(proxy.url(), l1_ttl=0.001)  # ~no L1: every read crosses the proxy
    holder = caches(proxy.url())  # default L1: one resident key, kept by each replay
    assert other.connect(wait=5.0) and worker_cache.connect(wait=5.0)
    assert holder.connect(wait=5.0)
    for i in range(16):
        other.set(f"r{i}", i)
    other.set("resident", "r")
    assert hold(holder, "resident") == "r"

    recoveries: list[float] = []
    failed: list[int] = []
    with Hammer(worker_cache) as hammer:
        time.sleep(0.3)
        for _ in range(3):
            rec_worker = worker_cache.stats().reconnects
            rec_holder = holder.stats().reconnects
            reset_at = monotonic()
            aborted = proxy.reset()
            assert aborted >= 3, f"only {aborted} connections were reset"
            assert wait_until(partial(hammer.recovered_since, reset_at), CALL_BOUND), (
                "get/set not working 1 s after the reset")
            ops_back = monotonic() - reset_at

            def buses_back(rw: int = rec_worker, rh: int = rec_holder) -> bool:
                return (worker_cache.stats().reconnects > rw and holder.stats().reconnects > rh
                        and worker_cache.health().bus_connected
                        and holder.health().bus_connected)

            assert wait_until(buses_back, CALL_BOUND), (
                f"listeners not resubscribed 1 s after the reset: {worker_cache.stats()}, "
                f"{holder.stats()}")
            recoveries.append(max(ops_back, monotonic() - reset_at))
            assert served_from_l1(holder, "resident"), "the replay did not keep L1"
            assert holder.stats().l1_flushes == 0, holder.stats()
            time.sleep(0.3)
            failed.append(hammer.failed_since(reset_at))
    assert not hammer.unexpected, hammer.unexpected[:5]
    ops = len(hammer.log)
    assert ops > 100, f"the worker made only {ops} calls: the test proves nothing"
    print(f"\nreset x3: {ops} ops, failed after each reset {failed}, "
          f"recovery (ops + bus) {[round(r * 1000) for r in recoveries]} ms")
    for cache in (worker_cache, holder, other):
        cache.close()
    assert_no_new_threads(baseline)


def test_slow_link(proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]) -> None:
    """100 ms per chunk: still correct. 600 ms (> socket_timeout): a bounded, counted miss."""
    baseline = set(threading.enumerate())
    other = caches(own_server.url)
    victim = caches(proxy.url())
    for i in range(6):
        other.set(f"a{i}", {"i": i})
        other.set(f"b{i}", {"i": i})
    assert victim.connect(wait=5.0)

    proxy.set_latency(down=0.1)
    slow: list[float] = []
    for i in range(6):
        value, took = timed(partial(victim.get, f"a{i}", ABSENT))
        assert value == {"i": i}, f"get under 100 ms latency returned {value!r} ({took:.3f} s)"
        assert took >= 0.09, f"the proxy did not delay the reply ({took:.3f} s)"
        slow.append(took)
    result, took = timed(lambda: victim.set("slow", 1))
    assert result is None, f"set under 100 ms latency failed: {result!r}"
    assert other.get("slow") == 1
    assert victim.stats().redis_errors == 0

    proxy.set_latency(down=0.6)
    errors = victim.stats().redis_errors
    degraded: list[float] = []
    for i in range(5):
        value, took = timed(partial(victim.get, f"b{i}", "dflt"))
        assert value == "dflt", f"get under 600 ms latency returned {value!r}"
        assert took < CALL_BOUND, f"a get took {took:.3f} s with socket_timeout 0.25"
        degraded.append(took)
    assert victim.stats().redis_errors == errors + 5, victim.stats()
    result, took = timed(lambda: victim.set("slow", 2))
    assert isinstance(result, BackendError), f"set under 600 ms latency: {result!r}"
    assert took < CALL_BOUND

    proxy.set_latency()
    healed_at = monotonic()
    assert wait_until(lambda: victim.get("b0", ABSENT) == {"i": 0}, CALL_BOUND)
    read_back = monotonic() - healed_at
    assert wait_until(lambda: victim.health().ok, 3.0), victim.health()
    print(f"\nslow link: 100 ms/chunk gets {[round(t * 1000) for t in slow]} ms; "
          f"600 ms/chunk gets degrade in {[round(t * 1000) for t in degraded]} ms; "
          f"reads back {read_back * 1000:.0f} ms after the latency is removed")
    victim.close()
    other.close()
    assert_no_new_threads(baseline)


def test_a_read_on_a_new_connection_over_a_slow_link_is_bounded(
    proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    """README: "No call waits longer than connect_timeout/socket_timeout times 1 + retries
    plus a short backoff". Every reply here arrives within socket_timeout (200 ms < 250 ms),
    but a new connection costs a handshake before the command."""
    other = caches(own_server.url)
    other.set("k", "v")
    victim = caches(proxy.url())
    cfg = victim.config
    promised = max(cfg.socket_timeout, cfg.connect_timeout) * (1 + cfg.retries) + 0.05
    proxy.set_latency(down=0.2)
    value, took = timed(lambda: victim.get("k", ABSENT))  # the first call: a new connection
    round_trips = max(c.chunks_down for c in proxy.connections() if not c.subscribed)
    assert took <= promised + 0.25, (
        f"get() on a new connection took {took:.3f} s (returned {value!r}) over a link with "
        f"200 ms replies: {round_trips} round trips; promised <= {promised:.2f} s "
        f"(+0.25 s slack)")


def test_own_write_racing_a_newer_remote_write(
    proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    """Replies slow (150 ms), bus fast: another worker's newer write, and its invalidation,
    reach the writer before the reply to the writer's own older set() does. The older value
    must not then be served from the writer's L1 beyond the staleness bound."""
    writer = caches(proxy.url())
    other = caches(own_server.url)
    raw = redis.Redis.from_url(own_server.url)
    assert writer.connect(wait=5.0) and other.connect(wait=5.0)
    writer.set("warm", 0)  # the data connection exists before the latency is added
    data_key = f"{writer.config.namespace}:v:k"
    proxy.set_latency(down=0.15, scope="data")
    received = writer.stats().invalidations_received
    result: dict[str, Any] = {}

    def own_set() -> None:
        try:
            writer.set("k", "mine")
        except Exception as exc:
            result["error"] = exc
        result["returned"] = monotonic()

    thread = threading.Thread(target=own_set, name="chaos-own-set", daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: raw.get(data_key) is not None, 2.0, step=0.001)
        other.set("k", "theirs")  # newer than "mine" in L2, and published after it
        written_at = monotonic()
        assert wait_until(lambda: writer.stats().invalidations_received > received, 2.0,
                          step=0.001), "the writer never heard the newer write"
        heard_at = monotonic()
    finally:
        thread.join(5.0)
    assert "error" not in result, result
    assert heard_at < result["returned"], (
        "race not set up: set() returned before the invalidation was heard")
    assert raw.get(data_key) is not None and other.get("k") == "theirs"
    proxy.set_latency()
    bound = staleness_bound(writer)
    seen = _watch(writer, "k", "mine", "theirs", written_at=written_at,
                  until=written_at + bound + SLACK + 0.3)
    worst = seen.worst_staleness
    assert worst <= bound + SLACK, (
        f"the writer served its own older value {worst:.3f} s after a newer write's "
        f"invalidation (bound {bound} s + {SLACK} s slack); L1 still holds it: "
        f"{served_from_l1(writer, 'k')}")


@dataclass(frozen=True)
class Watched:
    """What :func:`_watch` saw (monotonic times; None: never)."""

    last_stale: float | None
    first_fresh: float | None
    down_at: float | None
    worst_staleness: float  # last stale read minus the invalidating write's completion
    slowest: float  # the longest single get()


def _watch(
    victim: FleetCache, key: str, stale: Any, fresh: Any, *, written_at: float, until: float,
) -> Watched:
    """Poll ``victim.get(key)`` until ``until``: the last stale and first fresh reads.

    Also notes when the victim's bus was first seen down (its listener's own flag: a
    health() PING per poll would take 0.25 s when everything is blackholed).
    """
    last_stale: float | None = None
    first_fresh: float | None = None
    down_at: float | None = None
    slowest = 0.0
    others: list[Any] = []
    while True:
        start = monotonic()
        conn = connections(victim)
        if down_at is None and conn is not None and not conn.bus_connected:
            down_at = start  # looked before the get: a get after the flush may take 0.25 s
        value = victim.get(key, ABSENT)
        now = monotonic()
        slowest = max(slowest, now - start)
        if value == stale:
            last_stale = start
        elif value == fresh:
            first_fresh = first_fresh or now
        elif value != ABSENT:
            others.append(value)
        if now >= until:
            break
        time.sleep(0.001)
    assert not others, f"values never written were read: {others[:3]}"
    return Watched(last_stale, first_fresh, down_at,
                   (last_stale - written_at) if last_stale else 0.0, slowest)


class Warm(NamedTuple):
    """:func:`_warm`'s pair of caches and the bounds they are held to."""

    victim: FleetCache  # through the proxy
    other: FleetCache  # straight to the server
    bound: float  # :func:`staleness_bound` of the victim
    detect_bound: float  # the watchdog's: health_check_interval + health_check_timeout
    reconnects: int  # the victim's, before any fault


def _warm(proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]) -> Warm:
    """A victim through the proxy (the documented defaults: 1 s + 0.5 s watchdog, 1 s
    degraded) and another cache, both connected; the victim holds "k" = "v1" and
    "resident" in L1."""
    victim = caches(proxy.url())
    other = caches(own_server.url)
    cfg = victim.config
    bound = staleness_bound(victim)
    detect_bound = cfg.health_check_interval + cfg.health_check_timeout
    assert victim.connect(wait=5.0) and other.connect(wait=5.0)
    other.set("k", "v1")
    other.set("resident", "r")
    assert hold(victim, "k") == "v1" and hold(victim, "resident") == "r"
    return Warm(victim, other, bound, detect_bound, victim.stats().reconnects)


def _blackhole_after_a_pong(proxy: Proxy, scope: Scope) -> tuple[float, int]:
    """Blackhole the ``scope`` connections (new ones too) at the worst moment: just after the
    watchdog's PONG, so the next PING is a full interval off; (when, how many)."""
    proxy.wait_for_chunk("pubsub", "down", timeout=3.0)
    blackholed_at = monotonic()
    return blackholed_at, proxy.blackhole(scope, new_connections=True)


def _write_v2_and_watch(victim: FleetCache, other: FleetCache, bound: float) -> Watched:
    """``other`` sets "k" to "v2"; the victim's reads of it until past ``bound``."""
    other.set("k", "v2")
    written_at = monotonic()
    return _watch(victim, "k", "v1", "v2", written_at=written_at,
                  until=written_at + bound + SLACK + 0.3)


def test_silent_pubsub_listener(
    proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    """Only the listener's connection goes silent (data commands still work)."""
    baseline = set(threading.enumerate())
    victim, other, bound, detect_bound, reconnects = _warm(proxy, own_server, caches)
    blackholed_at, cut = _blackhole_after_a_pong(proxy, "pubsub")
    assert cut == 1
    seen = _write_v2_and_watch(victim, other, bound)
    down_at = seen.down_at
    assert down_at is not None, "the watchdog never noticed the silent bus"
    detect = down_at - blackholed_at
    worst = seen.worst_staleness
    assert detect <= detect_bound + SLACK, (
        f"watchdog took {detect:.3f} s, bound {detect_bound} s + {SLACK} s slack")
    assert not victim.health().bus_connected
    assert worst <= bound + SLACK, (
        f"invalidated value served {worst:.3f} s after the invalidation, bound {bound} s "
        f"+ {SLACK} s slack")
    assert seen.first_fresh is not None, "never read the new value"
    assert not served_from_l1(victim, "resident"), "L1 not suspended when the bus went down"

    time.sleep(0.3)
    assert not victim.health().bus_connected, "the bus came back through a blackhole"

    healed_at = monotonic()
    proxy.heal()
    assert wait_until(lambda: victim.health().bus_connected, 3.0), "bus not back after heal"
    back = monotonic() - healed_at
    assert victim.stats().reconnects > reconnects
    # Invalidations flow again: an L1 entry with the full l1_ttl is dropped by a remote set.
    assert hold(victim, "k") == "v2"
    other.set("k", "v3")
    assert wait_until(lambda: victim.get("k") == "v3", 1.0), "bus deaf after the heal"
    print(f"\nsilent listener: detected in {detect:.3f} s (bound {detect_bound}); worst "
          f"staleness {worst:.3f} s (bound {bound}); bus back {back * 1000:.0f} ms after heal")
    victim.close()
    other.close()
    assert_no_new_threads(baseline)


def test_entries_stored_while_the_bus_is_down_live_degraded_l1_ttl(
    proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    """The bus never comes up (every subscription blackholed); the data path works.

    Each failed listener attempt flushes L1, so to see degraded_l1_ttl (and not a flush) at
    work, the value is cached just after an attempt began: the next flush is then
    health_check_interval + health_check_timeout (1.5 s) away, far beyond degraded_l1_ttl.
    """
    baseline = set(threading.enumerate())
    proxy.blackhole("pubsub", new_connections=True)
    victim = caches(proxy.url(), degraded_l1_ttl=0.3)
    other = caches(own_server.url)
    degraded = victim.config.degraded_l1_ttl
    other.set("k", "v0")
    assert not victim.connect(wait=0.3)
    results = []
    for i in range(1, 3):
        attempts = {c.id for c in proxy.connections() if c.subscribed}
        assert wait_until(lambda a=attempts: any(  # type: ignore[misc]
            c.subscribed and c.id not in a for c in proxy.connections()), 5.0), (
            "the listener stopped trying to subscribe")
        assert hold(victim, "k") == f"v{i - 1}"
        other.set("k", f"v{i}")
        written_at = monotonic()
        seen = _watch(victim, "k", f"v{i - 1}", f"v{i}", written_at=written_at,
                  until=written_at + degraded + SLACK + 0.2)
        assert not victim.health().bus_connected, "the bus came up through a blackhole"
        worst = seen.worst_staleness
        assert worst <= degraded + SLACK, (
            f"an entry stored while the bus was down was served {worst:.3f} s after it was "
            f"invalidated: degraded_l1_ttl {degraded} s + {SLACK} s slack")
        assert seen.first_fresh is not None
        results.append(worst)
    print(f"\nbus down: entries served stale for {[round(w, 3) for w in results]} s "
          f"(degraded_l1_ttl {degraded})")
    victim.close()
    other.close()
    proxy.heal()
    assert_no_new_threads(baseline)


def test_every_connection_blackholed_after_the_bus_is_up(
    proxy: Proxy, own_server: Server, caches: Callable[..., FleetCache]
) -> None:
    """Everything through the proxy goes silent (a partition): reads degrade, L1 is
    suspended."""
    baseline = set(threading.enumerate())
    victim, other, bound, detect_bound, reconnects = _warm(proxy, own_server, caches)
    blackholed_at, cut = _blackhole_after_a_pong(proxy, "all")
    assert cut >= 2
    seen = _write_v2_and_watch(victim, other, bound)
    assert seen.down_at is not None, "the watchdog never noticed the partition"
    detect = seen.down_at - blackholed_at
    worst = seen.worst_staleness
    assert detect <= detect_bound + SLACK, f"watchdog took {detect:.3f} s"
    assert worst <= bound + SLACK, (
        f"invalidated value served {worst:.3f} s after the invalidation, bound {bound} s "
        f"+ {SLACK} s slack")
    assert seen.first_fresh is None, "read the new value through a blackhole?"
    assert seen.slowest < CALL_BOUND, f"a get took {seen.slowest:.3f} s"

    errors = victim.stats().redis_errors
    value, took = timed(lambda: victim.get("resident", "dflt"))
    assert value == "dflt", f"L1 not suspended: resident key read {value!r}"
    assert took < CALL_BOUND and victim.stats().redis_errors == errors + 1
    health, took = timed(victim.health)
    assert not health.redis_ok and not health.bus_connected and took < CALL_BOUND, health

    healed_at = monotonic()
    proxy.heal()
    assert wait_until(lambda: victim.health().ok, 3.0), victim.health()
    back = monotonic() - healed_at
    assert victim.stats().reconnects > reconnects
    assert victim.get("k") == "v2"
    assert hold(victim, "k") == "v2"
    other.set("k", "v3")
    assert wait_until(lambda: victim.get("k") == "v3", 1.0), "bus deaf after the heal"
    print(f"\npartition: detected in {detect:.3f} s; worst staleness {worst:.3f} s (bound "
          f"{bound}); slowest get {seen.slowest * 1000:.0f} ms; healthy again "
          f"{back * 1000:.0f} ms after heal")
    victim.close()
    other.close()
    assert_no_new_threads(baseline)
