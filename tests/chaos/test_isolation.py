"""Two namespaces on one server never touch each other (README: "Everything fleetcache puts in
Redis lives under the namespace ... so several apps can share one Redis").

Namespace B is named A plus a suffix ("tX" and "tX-b"), so any prefix match, unescaped glob
or shared channel would show. Every "nothing happened in B" check is paired with a control
in A (a second cache of A that *does* see the notice, a waiter of A that *does* wait), so a
notice that was merely late cannot pass for one that was never sent to B.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from fleetcache import FleetCache

from ..helpers import closing_all
from ..integration.procs import ABSENT, hold
from ..servers import Server
from ..waiting import wait_until

pytestmark = pytest.mark.slow

monotonic = time.monotonic

KEYS = ["k", "user:1", "a*", "a?", "[ab]", "x:v:y", "ключ", "with space", "line\nbreak"]
NOTICE_TIMEOUT = 5.0


@pytest.fixture
def spaces(server: Server) -> Iterator[Callable[..., FleetCache]]:
    """``spaces("A")``/``spaces("B")``: connected caches in namespace A (``tX``) or B
    (``tX-b``, A's name plus a suffix); closed after the test."""
    base = "t" + uuid.uuid4().hex[:10]
    names = {"A": base, "B": base + "-b"}
    with closing_all() as keep:

        def factory(space: str, **options: Any) -> FleetCache:
            cache = keep(FleetCache.from_url(server.url, namespace=names[space], **options))
            assert cache.connect(wait=5.0), "invalidation bus did not subscribe"
            return cache

        yield factory


@pytest.fixture
def raw(server: Server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    yield client
    client.close()


def received(cache: FleetCache) -> int:
    return cache.stats().invalidations_received


def l1_hit(cache: FleetCache, key: str) -> Any:
    """get ``key``, asserting it was an L1 hit; the value."""
    before = cache.stats().l1_hits
    value = cache.get(key, ABSENT)
    assert cache.stats().l1_hits == before + 1, f"{key!r} was not served from L1"
    return value


def test_writes_in_a_never_invalidate_b(spaces: Callable[..., FleetCache]) -> None:
    a, a_peer, b = spaces("A"), spaces("A"), spaces("B")
    for key in KEYS:
        a.set(key, f"A:{key}")
        b.set(key, f"B:{key}")
    for key in KEYS:
        assert hold(b, key) == f"B:{key}"  # in B's L1
        assert hold(a_peer, key) == f"A:{key}"  # in A's other L1 (the control)
    assert received(b) == 0
    control_before = received(a_peer)

    # set, delete, clear in A; after each, the control has applied A's notice by the time
    # B is checked, so B had every chance to (wrongly) receive it too.
    steps: list[tuple[str, Callable[[], object]]] = [
        *[(f"set {k!r}", lambda k=k: a.set(k, f"A2:{k}")) for k in KEYS],
        *[(f"delete {k!r}", lambda k=k: a.delete(k)) for k in KEYS[:3]],
        ("clear", a.clear),
    ]
    for what, step in steps:
        expected = received(a_peer) + 1
        hits = b.stats().l1_hits
        step()
        assert wait_until(lambda expected=expected: received(a_peer) >= expected,
                          NOTICE_TIMEOUT), f"A's own peer never saw A's {what}"
        for key in KEYS:
            assert l1_hit(b, key) == f"B:{key}", f"after A's {what}"
        assert b.stats().l1_hits == hits + len(KEYS)
        assert received(b) == 0, f"B received a notice after A's {what}: {b.stats()}"
    # A's peer really dropped what A invalidated (the control worked), B kept everything.
    assert a_peer.get("k", ABSENT) == ABSENT  # cleared
    assert received(a_peer) == control_before + len(steps)
    assert b.stats().invalidations_received == 0


def test_b_never_sees_a_values(spaces: Callable[..., FleetCache], raw: redis.Redis) -> None:
    a, b = spaces("A"), spaces("B")
    for key in KEYS:
        a.set(key, f"A:{key}")
    for key in KEYS:
        assert b.get(key, ABSENT) == ABSENT, key
        assert a.get(key) == f"A:{key}"
    assert b.get_many(KEYS) == {}
    assert b.get_or_compute("k", lambda: "B computed") == "B computed"
    assert a.get("k") == "A:k"  # B's fill did not overwrite A's value...
    assert b.get("k") == "B computed"  # ...nor did A's value satisfy B's lookup
    assert b.stats().l2_hits == 0 and b.stats().misses == len(KEYS) * 2 + 1, b.stats()
    # Where the values live: each namespace's own prefix.
    name_a, name_b = a.config.namespace, b.config.namespace
    assert raw.exists(*[f"{name_a}:v:{k}" for k in KEYS]) == len(KEYS)
    assert raw.exists(*[f"{name_b}:v:{k}" for k in KEYS]) == 1


def test_clear_in_a_leaves_b_values(
    spaces: Callable[..., FleetCache], raw: redis.Redis
) -> None:
    a, b = spaces("A"), spaces("B")
    for key in KEYS:
        a.set(key, f"A:{key}")
        b.set(key, f"B:{key}")
    b.set("only-b", "B only")
    b.publish_to_stream("events", {"from": "B"})
    assert a.clear() == len(KEYS)  # A's values only: B's are not counted, nor deleted
    fresh_b = spaces("B")  # an empty L1: reads come from L2
    for key in [*KEYS, "only-b"]:
        expected = "B only" if key == "only-b" else f"B:{key}"
        assert fresh_b.get(key, ABSENT) == expected, key
        assert b.get(key, ABSENT) == expected, key
    assert fresh_b.stats().l2_hits == len(KEYS) + 1
    for key in KEYS:
        assert a.get(key, ABSENT) == ABSENT, key
    name_a, name_b = a.config.namespace, b.config.namespace
    assert list(raw.scan_iter(match=f"{name_a}:v:*")) == []
    assert len(list(raw.scan_iter(match=f"{name_b}:v:*"))) == len(KEYS) + 1
    assert [f for _, f in b.read_stream_latest("events")] == [{"from": "B"}]
    # And the other way round.
    assert b.clear() == len(KEYS) + 1
    assert b.get("k", ABSENT) == ABSENT  # the clearer's own L1 at once, its peer's soon
    assert wait_until(lambda: fresh_b.get("k", ABSENT) == ABSENT, NOTICE_TIMEOUT)


def test_streams_are_per_namespace(
    spaces: Callable[..., FleetCache], raw: redis.Redis
) -> None:
    a, b = spaces("A"), spaces("B")
    a_ids = [a.publish_to_stream("events", {"n": str(i), "from": "A"}) for i in range(3)]
    assert b.read_stream_latest("events", 10) == []
    assert b.read_stream("events", last_id="0-0", count=10) == []
    # A blocking read in B is not woken by A's entries.
    got: list[Any] = []
    reader = threading.Thread(
        target=lambda: got.append(b.read_stream("events", last_id="$", block_ms=600)))
    reader.start()
    assert wait_until(lambda: any(c.get("cmd") == "xread" for c in raw.client_list()), 5.0,
                      step=0.01), "B's XREAD BLOCK never reached the server"
    a.publish_to_stream("events", {"n": "late", "from": "A"})
    reader.join(5)
    assert not reader.is_alive()
    assert got == [[]], f"B's blocking read returned A's entries: {got}"
    b_id = b.publish_to_stream("events", {"from": "B"})
    assert [f["from"] for _, f in a.read_stream_latest("events", 10)] == ["A"] * 4
    assert [i for i, _ in a.read_stream("events", last_id="0-0", count=10)][:3] == a_ids
    assert b.read_stream_latest("events", 10) == [(b_id, {"from": "B"})]


def test_a_lock_does_not_block_b(
    spaces: Callable[..., FleetCache], raw: redis.Redis
) -> None:
    """A holds the fleet lock of K (a slow compute): B computes K at once, while A's other
    process (the control) waits for A's value."""
    a, a_peer, b = spaces("A"), spaces("A"), spaces("B")
    key = "K"
    compute_seconds = 2.0
    started = threading.Event()
    results: dict[str, Any] = {}

    def slow() -> str:
        started.set()
        time.sleep(compute_seconds)  # the work the lock protects
        return "A value"

    def run(name: str, cache: FleetCache, compute: Callable[[], str]) -> None:
        t0 = monotonic()
        try:
            results[name] = (cache.get_or_compute(key, compute), monotonic() - t0, t0)
        except Exception as exc:
            results[name] = (exc, monotonic() - t0, t0)

    holder = threading.Thread(target=run, args=("A", a, slow))
    peer: threading.Thread | None = None
    holder.start()
    try:
        assert started.wait(5), "A's compute never started"
        t_started = monotonic()
        lock_key = f"redlock:{a.config.namespace}:lock:{key}"
        assert raw.exists(lock_key), f"A holds no Redis lock under {lock_key!r}"
        peer = threading.Thread(target=run, args=("A peer", a_peer, lambda: "A peer value"))
        peer.start()
        b_calls: list[float] = []

        def fast() -> str:
            b_calls.append(monotonic())
            return "B value"

        run("B", b, fast)
        b_value, b_took, _ = results["B"]
        assert b_value == "B value", results
        assert b_calls, "B did not compute"
        assert b_took < 1.0, f"B took {b_took:.3f} s: it waited for A's lock"
        assert holder.is_alive(), "A's compute finished before B's: the check proved nothing"
        assert b.stats().lock_waits == 0, b.stats()
        assert not raw.exists(f"redlock:{b.config.namespace}:lock:{key}")
        print(f"\nB computed K {b_calls[0] - t_started:.3f} s into A's "
              f"{compute_seconds} s compute, returned after {b_took:.3f} s")
    finally:
        holder.join(10)
        if peer is not None:
            peer.join(10)
    assert results["A"][0] == "A value", results
    # The control: A's peer did wait for A's compute and got A's value.
    assert results["A peer"][0] == "A value", results
    assert a_peer.stats().lock_waits >= 1 and a_peer.stats().computes == 0, a_peer.stats()
    assert b.get(key) == "B value" and a.get(key) == "A value"
