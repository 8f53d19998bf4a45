"""The fleet view without a server: the registry script on fakeredis (with the server clock
replaced by ``now_ms``, so expiry is tested without sleeping), aggregation, the Prometheus
text (checked with prometheus_client's own parser), and the reporter's snapshot on a fake
clock."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetcache import CacheConfig, ConfigError, KeyLayout
from fleetcache.core.l1 import LocalStore
from fleetcache.core.stats import CacheStats, Counters
from fleetcache.observe import prometheus
from fleetcache.observe.fleet import parse, read_fleet
from fleetcache.observe.registry import FOLDED_MEMORY, RETAIN, Registry
from fleetcache.observe.report import Reporter
from fleetcache.observe.snapshot import COUNTERS, VERSION, WorkerSnapshot
from fleetcache.testing import FakeClock

T0 = 1_700_000_000_000  # ms
TTL = 15.0


def snap(host: str, pid: int, **counters: float) -> WorkerSnapshot:
    values = dict.fromkeys(COUNTERS, 0.0)
    values.update(counters)
    return WorkerSnapshot(v=VERSION, host=host, pid=pid, instance="i", started=1.0,
                          reported=2.0,
                          interval=5.0, l1_size=10 + pid, l1_capacity=100, in_flight=0,
                          bus_connected=True, l1_suspended=False, listener_lag_ms=1.5,
                          counters=values)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def keys() -> KeyLayout:
    return KeyLayout("obs")


@pytest.fixture
def reg(r: fakeredis.FakeRedis, keys: KeyLayout) -> Registry:
    return Registry(r, keys)


def stored(s: WorkerSnapshot) -> bytes:
    import msgspec

    return msgspec.json.encode(s.counters)


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text format, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# -- the registry ----------------------------------------------------------------------------

def test_live_workers_are_read_back_with_totals(reg: Registry, r: Any, keys: KeyLayout) -> None:
    reg.report(snap("a", 1, l1_hits=10, misses=2), TTL, None, now_ms=T0)
    reg.report(snap("a", 2, l1_hits=5, l2_hits=1), TTL, None, now_ms=T0)
    reg.report(snap("b", 1, misses=7), TTL, None, now_ms=T0)
    view = read_fleet(r, keys, now_ms=T0 + 1000)
    assert [(w.host, w.pid) for w in view.workers] == [("a", 1), ("a", 2), ("b", 1)]
    totals = view.totals()
    assert (totals["workers"], totals["l1_hits"], totals["l2_hits"], totals["misses"]) == \
        (3, 15, 1, 9)
    assert totals["lookups"] == 25 and totals["l1_size"] == 11 + 12 + 11
    assert view.hosts["a"].live("l1_hits") == 15
    doc = view.to_json()
    assert doc["workers"][0]["l1_hits"] == 10 and doc["workers"][0]["host"] == "a"
    assert doc["retired"] == {}


def test_a_worker_past_its_ttl_leaves_the_view_and_its_counters_retire(
    reg: Registry, r: Any, keys: KeyLayout
) -> None:
    reg.report(snap("a", 1, l1_hits=10), TTL, None, now_ms=T0)
    reg.report(snap("a", 2, l1_hits=5), TTL, None, now_ms=T0 + 10_000)
    view = read_fleet(r, keys, now_ms=T0 + 14_999)
    assert len(view.workers) == 2
    view = read_fleet(r, keys, now_ms=T0 + 15_000)  # worker 1's TTL is over
    assert [w.pid for w in view.workers] == [2]
    assert view.hosts["a"].retired["l1_hits"] == 10
    assert view.hosts["a"].total("l1_hits") == 15  # monotonic: nothing lost, nothing twice
    assert read_fleet(r, keys, now_ms=T0 + 16_000).hosts["a"].total("l1_hits") == 15


def test_retire_adds_the_final_counters_at_once(reg: Registry, r: Any, keys: KeyLayout) -> None:
    first = snap("a", 1, l1_hits=10)
    reg.report(first, TTL, None, now_ms=T0)
    reg.retire(snap("a", 1, l1_hits=12, l1_suspended_s=0.25), stored(first), now_ms=T0 + 1)
    view = read_fleet(r, keys, now_ms=T0 + 2)
    assert view.workers == []
    assert view.hosts["a"].retired == {"l1_hits": 12.0, "l1_suspended_s": 0.25}
    assert view.to_json()["retired"] == {"a": {"l1_hits": 12, "l1_suspended_s": 0.25}}


def test_a_worker_declared_dead_while_alive_is_not_counted_twice(
    reg: Registry, r: Any, keys: KeyLayout
) -> None:
    first = snap("a", 1, l1_hits=10)
    reg.report(first, TTL, None, now_ms=T0)
    assert read_fleet(r, keys, now_ms=T0 + 20_000).hosts["a"].retired["l1_hits"] == 10
    # It was only paused: its next report carries every hit, the folded ten included.
    assert reg.report(snap("a", 1, l1_hits=13), TTL, stored(first), now_ms=T0 + 21_000)
    host = read_fleet(r, keys, now_ms=T0 + 21_001).hosts["a"]
    assert host.retired.get("l1_hits", 0) == 0 and host.total("l1_hits") == 13
    # A new process that reused the pid has no stored snapshot: nothing is taken back.
    reg.report(snap("b", 1, l1_hits=4), TTL, None, now_ms=T0)
    read_fleet(r, keys, now_ms=T0 + 20_000)
    assert not reg.report(snap("b", 1, l1_hits=1), TTL, None, now_ms=T0 + 21_000)
    assert read_fleet(r, keys, now_ms=T0 + 21_001).hosts["b"].total("l1_hits") == 5


def test_a_return_is_recognised_only_for_a_while(reg: Registry, r: Any, keys: KeyLayout) -> None:
    first = snap("a", 1, l1_hits=10)
    reg.report(first, TTL, None, now_ms=T0)
    read_fleet(r, keys, now_ms=T0 + 20_000)
    late = T0 + 20_000 + int(FOLDED_MEMORY * 1000) + 1
    reg.report(snap("z", 9), TTL, None, now_ms=late)  # any call prunes the memory
    assert not reg.report(snap("a", 1, l1_hits=11), TTL, stored(first), now_ms=late)


def test_retired_totals_of_a_host_gone_for_good_are_dropped(
    reg: Registry, r: Any, keys: KeyLayout
) -> None:
    reg.report(snap("gone", 1, misses=3), TTL, None, now_ms=T0)
    reg.report(snap("stays", 1, misses=1), TTL, None, now_ms=T0)
    assert read_fleet(r, keys, now_ms=T0 + 20_000).hosts["gone"].retired == {"misses": 3}
    later = T0 + 20_000 + int(RETAIN * 1000) + 1
    reg.report(snap("stays", 2), TTL, None, now_ms=later - 10)  # keeps its host
    view = read_fleet(r, keys, now_ms=later)
    assert "gone" not in view.hosts
    assert view.hosts["stays"].retired == {"misses": 1}
    assert not any(name.startswith(b"gone|") for name in r.hkeys(keys.retired))


def test_every_key_expires_after_the_retention(reg: Registry, r: Any, keys: KeyLayout) -> None:
    reg.report(snap("a", 1, misses=1), TTL, None, now_ms=T0)
    reg.retire(snap("a", 2, misses=1), None, now_ms=T0)
    for name in (keys.workers, keys.workers_live, keys.retired):
        assert 0 < r.pttl(name) <= RETAIN * 1000, name


def test_foreign_entries_are_skipped(reg: Registry, r: Any, keys: KeyLayout) -> None:
    reg.report(snap("a", 1, misses=1), TTL, None, now_ms=T0)
    r.hset(keys.workers, "x:1", b"not json")
    r.hset(keys.workers, "y:1", b'{"v": 99}')
    assert [w.pid for w in read_fleet(r, keys, now_ms=T0 + 1).workers] == [1]


def test_parse_reads_flat_replies() -> None:
    view = parse(T0, [b"a:1:i", msgspec_json(snap("a", 1, misses=2))],
                 [b"a|misses", b"4", b"a|", b"123", b"b|l1_hits", b"nan?"])
    assert view.server_time == T0 / 1000
    assert view.hosts["a"].total("misses") == 6
    assert "b" not in view.hosts  # an unreadable total is skipped


def msgspec_json(s: WorkerSnapshot) -> bytes:
    from fleetcache.observe.snapshot import encode

    return encode(s)


# -- Prometheus ------------------------------------------------------------------------------

def test_the_text_format_parses_with_prometheus_client_and_sums_per_host(
    reg: Registry, r: Any, keys: KeyLayout
) -> None:
    reg.report(snap("a", 1, l1_hits=10, l2_hits=3, misses=2, computes=2, stale_served=1,
                    lock_waits=4, invalidations_sent=5, invalidations_received=6,
                    redis_errors=7, l1_suspended_s=0.5), TTL, None, now_ms=T0)
    reg.report(snap("a", 2, l1_hits=1), TTL, None, now_ms=T0 + 10_000)
    reg.report(snap('b"\\x', 1, misses=9), TTL, None, now_ms=T0 + 10_000)
    text = prometheus.render(read_fleet(r, keys, now_ms=T0 + 16_000))  # a:1 retired
    got = metrics(text)
    a, b = (("host", "a"),), (("host", 'b"\\x'),)
    assert got[("fleetcache_hits_total", (("host", "a"), ("tier", "l1")))] == 11
    assert got[("fleetcache_hits_total", (("host", "a"), ("tier", "l2")))] == 3
    for name, value in (("misses", 2), ("computes", 2), ("stale_served", 1),
                        ("lock_waits", 4), ("invalidations_sent", 5),
                        ("invalidations_received", 6), ("redis_errors", 7)):
        assert got[(f"fleetcache_{name}_total", a)] == value, name
    assert got[("fleetcache_l1_suspended_seconds_total", a)] == 0.5
    assert got[("fleetcache_misses_total", b)] == 9  # label escaping survives the parser
    assert got[("fleetcache_workers", a)] == 1 and got[("fleetcache_workers", b)] == 1
    assert got[("fleetcache_l1_entries", a)] == 12
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["fleetcache_hits"] == "counter" and types["fleetcache_workers"] == "gauge"


def test_a_host_with_only_retired_workers_keeps_its_series(
    reg: Registry, r: Any, keys: KeyLayout
) -> None:
    reg.report(snap("a", 1, misses=3), TTL, None, now_ms=T0)
    got = metrics(prometheus.render(read_fleet(r, keys, now_ms=T0 + 20_000)))
    assert got[("fleetcache_misses_total", (("host", "a"),))] == 3
    assert got[("fleetcache_workers", (("host", "a"),))] == 0


def test_an_empty_fleet_renders_headers_only(r: Any, keys: KeyLayout) -> None:
    text = prometheus.render(read_fleet(r, keys, now_ms=T0))
    assert metrics(text) == {}
    assert "# TYPE fleetcache_workers gauge" in text


# -- the reporter's snapshot and the setting --------------------------------------------------

class _Source:
    def __init__(self, clock: FakeClock) -> None:
        self.counters = Counters()
        self.l1 = LocalStore(50, clock, self.counters)


class _Bus:
    connected = True

    def renew_if_drained(self) -> bool:
        return False  # the test sets the lease itself


def test_the_snapshot_has_every_counter_and_the_listener_lag(r: Any, keys: KeyLayout) -> None:
    clock = FakeClock()
    source = _Source(clock)
    source.counters.misses = 3
    source.counters.in_flight = 1
    source.l1.put("k", 1, 60.0, source.l1.seq)
    source.l1.data["k"][2] += 4  # what four L1 hits leave on the entry
    source.l1.lease(clock.monotonic() + 0.05)  # drained just now (max_listener_lag 0.05)
    reporter = Reporter(r, keys, source, _Bus(), interval=5.0, max_listener_lag=0.05,
                        clock=clock)
    clock.advance(0.02)
    s = reporter.snapshot()
    assert set(s.counters) == set(COUNTERS) == {f for f in CacheStats.__dataclass_fields__
                                                if f != "in_flight"}
    assert (s.counters["misses"], s.counters["l1_hits"], s.in_flight, s.l1_size) == (3, 4, 1, 1)
    assert s.listener_lag_ms == pytest.approx(20.0)
    reporter.report()
    assert read_fleet(r, keys).workers[0].counter("l1_hits") == 4


def test_stats_interval_is_validated() -> None:
    assert CacheConfig().stats_interval == 5.0
    assert CacheConfig(stats_interval=0).stats_interval == 0
    for bad in (-1, False, "5", float("nan"), 0.0001):
        with pytest.raises(ConfigError):
            CacheConfig(stats_interval=bad)  # type: ignore[arg-type]


def test_the_fleet_view_names_live_in_the_key_layout() -> None:
    keys = KeyLayout("shop")
    assert (keys.workers, keys.workers_live, keys.workers_folded, keys.retired) == \
        ("shop:w", "shop:w:live", "shop:w:folded", "shop:w:retired")
    tagged = KeyLayout("shop", hash_tags=True)
    names = (tagged.workers, tagged.workers_live, tagged.workers_folded, tagged.retired)
    assert names == ("{shop}:w", "{shop}:w:live", "{shop}:w:folded", "{shop}:w:retired")
