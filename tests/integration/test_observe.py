"""The fleet view against a real server: caches report and retire, a killed worker leaves
the view within its TTL, the CLI subcommands end to end (``python -m fleetcache ...`` as
subprocesses), and the metrics endpoints (Flask route, WSGI app, middleware, collector)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleetcache import FleetCache, KeyLayout
from fleetcache.flask import FleetCacheExtension
from fleetcache.observe import (
    FleetCollector,
    make_metrics_app,
    metrics_middleware,
    read_cache_fleet,
    read_fleet,
)
from fleetcache.observe.snapshot import hostname
from fleetcache.testing import l1_size

from ..servers import DEAD_URL, Server
from ..waiting import wait_until

INTERVAL = 0.1
HOST = hostname()


def cli(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLEETCACHE_REDIS_URL", "REDIS_URL", "FLEETCACHE_NAMESPACE")}
    return subprocess.run([sys.executable, "-m", "fleetcache", *args], capture_output=True,
                          text=True, timeout=60, env=env, stdin=stdin, check=False)


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def view_of(server: Server, namespace: str) -> Any:
    client = redis.Redis.from_url(server.url)
    try:
        return read_fleet(client, KeyLayout(namespace))
    finally:
        client.close()


@pytest.fixture
def reporting(make_cache: Callable[..., FleetCache]) -> FleetCache:
    cache = make_cache(stats_interval=INTERVAL)
    assert cache.connect(wait=5.0)
    return cache


def _serve(cache: FleetCache) -> int:
    """Two misses (one computed), two L1 hits, one L2 hit: five lookups."""
    cache.get("absent")
    cache.get_or_compute("k", lambda: {"v": 1}, ttl=60)
    cache.get("k")
    cache.get("k")
    cache.set("other", 1)
    cache._l1.clear()  # so the next read is an L2 hit
    cache.get("other")
    return 5


def test_a_cache_reports_its_counters_and_retires_them_on_close(
    server: Server, namespace: str, reporting: FleetCache
) -> None:
    lookups = _serve(reporting)
    stats = reporting.stats()
    assert stats.lookups == lookups

    def reported() -> bool:
        workers = view_of(server, namespace).workers
        return len(workers) == 1 and workers[0].row()["lookups"] == lookups

    assert wait_until(reported, timeout=5)
    worker = view_of(server, namespace).workers[0]
    assert (worker.host, worker.pid, worker.bus_connected) == (HOST, os.getpid(), True)
    assert worker.row()["l1_hits"] == stats.l1_hits and worker.l1_size == l1_size(reporting)

    reporting.close()
    view = view_of(server, namespace)
    assert view.workers == []
    assert view.hosts[HOST].total("l1_hits") == stats.l1_hits
    assert view.hosts[HOST].total("misses") == stats.misses


def test_stats_interval_zero_reports_nothing(
    server: Server, namespace: str, make_cache: Callable[..., FleetCache]
) -> None:
    cache = make_cache(stats_interval=0)
    assert cache.connect(wait=5.0)
    cache.get("x")
    cache.close()
    assert view_of(server, namespace).hosts == {}


_WORKER = textwrap.dedent("""
    import sys, time
    from fleetcache import FleetCache
    cache = FleetCache.from_url(sys.argv[1], namespace=sys.argv[2], stats_interval=0.2)
    for i in range(3):
        cache.get(f"miss{i}")
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.mark.slow
def test_a_killed_worker_leaves_the_view_within_its_ttl(server: Server, namespace: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, server.url, namespace],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert wait_until(lambda: any(w.pid == proc.pid and w.row()["misses"] == 3
                                      for w in view_of(server, namespace).workers), timeout=5)
        os.kill(proc.pid, signal.SIGKILL)  # no worker_exit, no retire
        killed = time.monotonic()
        proc.wait(5)
        assert wait_until(lambda: not view_of(server, namespace).workers, timeout=3)
        gone_after = time.monotonic() - killed
    finally:
        proc.kill()
        proc.wait(5)
    assert gone_after <= 0.6 + 0.3  # TTL = 3 x 0.2 s after its last report, plus slack
    assert view_of(server, namespace).hosts[HOST].total("misses") == 3  # retired, not lost


# -- the CLI, end to end ----------------------------------------------------------------

def test_stats_json_lists_the_workers_with_totals(
    server: Server, namespace: str, reporting: FleetCache, make_cache: Callable[..., FleetCache]
) -> None:
    other = make_cache(stats_interval=INTERVAL)
    lookups = _serve(reporting)
    other.get("nothing")
    assert wait_until(lambda: view_of(server, namespace).totals()["lookups"] == lookups + 1,
                      timeout=5)
    done = cli("stats", "--url", server.url, "--namespace", namespace, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    rows = doc["workers"]
    assert len(rows) == 2 and {r["pid"] for r in rows} == {os.getpid()}  # one per cache
    assert {r["host"] for r in rows} == {HOST}
    assert doc["totals"]["lookups"] == sum(r["lookups"] for r in rows) == lookups + 1
    assert set(rows[0]) >= {"host", "pid", "l1_size", "l1_hits", "l2_hits", "misses",
                            "computes", "invalidations_sent", "bus_connected"}

    table = cli("stats", "--url", server.url, "--namespace", namespace)
    assert table.returncode == 0, table.stderr
    assert "2 live worker(s) on 1 host(s)" in table.stdout and HOST in table.stdout


def test_metrics_prints_text_that_prometheus_client_parses(
    server: Server, namespace: str, reporting: FleetCache
) -> None:
    _serve(reporting)
    stats = reporting.stats()
    assert wait_until(lambda: view_of(server, namespace).totals()["lookups"] == stats.lookups,
                      timeout=5)
    done = cli("metrics", "--url", server.url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    got = parsed(done.stdout)
    host = (("host", HOST),)
    assert got[("fleetcache_hits_total", (*host, ("tier", "l1")))] == stats.l1_hits
    assert got[("fleetcache_hits_total", (*host, ("tier", "l2")))] == stats.l2_hits
    assert got[("fleetcache_misses_total", host)] == stats.misses
    assert got[("fleetcache_computes_total", host)] == stats.computes
    assert got[("fleetcache_invalidations_sent_total", host)] == stats.invalidations_sent
    assert got[("fleetcache_workers", host)] == 1
    assert got[("fleetcache_l1_entries", host)] == l1_size(reporting)


def test_inspect_shows_presence_ttl_size_and_freshness(
    server: Server, namespace: str, cache: FleetCache
) -> None:
    cache.set("user:1", {"name": "alice"}, ttl=100, tags=["user", "org:7"])
    cache.get_or_compute("stale", lambda: 5, ttl=0.05, stale_ttl=60)
    time.sleep(0.1)  # past the fresh time (the server's clock decides)

    def inspect(key: str) -> tuple[int, dict[str, Any]]:
        done = cli("inspect", key, "--url", server.url, "--namespace", namespace, "--json")
        return done.returncode, json.loads(done.stdout)

    code, info = inspect("user:1")
    assert code == 0 and info["l2"] is True and info["state"] == "fresh"
    assert 90 < info["ttl_s"] <= 100 and info["size_bytes"] > 0
    assert json.loads(info["value"]) == {"name": "alice"}
    assert "per process" in info["l1"] and info["tags"] == ["user", "org:7"]
    code, info = inspect("stale")
    assert code == 0 and info["state"] == "stale" and info["ttl_s"] > 50
    assert info["tags"] == []
    code, info = inspect("absent")
    assert code == 1 and info["l2"] is False
    text = cli("inspect", "user:1", "--url", server.url, "--namespace", namespace)
    assert "fresh" in text.stdout and "alice" in text.stdout and "org:7" in text.stdout


def test_inspect_reports_a_foreign_value(server: Server, namespace: str, raw: redis.Redis) -> None:
    raw.set(KeyLayout(namespace).value("junk"), b"1")
    done = cli("inspect", "junk", "--url", server.url, "--namespace", namespace, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "corrupt"


def test_flush_clears_the_namespace_and_every_l1(
    server: Server, namespace: str, pair: tuple[FleetCache, FleetCache]
) -> None:
    a, b = pair
    a.set("x", 1)
    # A read racing a's own notice is not promoted: read until b's L1 holds it.
    assert wait_until(lambda: b.get("x") == 1 and l1_size(b) == 1, timeout=2)
    refused = cli("flush", "--url", server.url, "--namespace", namespace)
    assert refused.returncode == 1 and "--yes" in refused.stderr  # no terminal to ask on
    assert b.get("x") == 1
    done = cli("flush", "--url", server.url, "--namespace", namespace, "--yes")
    assert done.returncode == 0, done.stderr
    assert "1 value(s) deleted" in done.stdout
    assert wait_until(lambda: l1_size(b) == 0, timeout=2)  # the notice reached b's L1
    assert b.get("x") is None and a.get("x") is None


def test_an_unreachable_server_is_one_line(namespace: str) -> None:
    for command in (["stats", "--json"], ["stats"], ["metrics"]):
        done = cli(*command, "--url", DEAD_URL, "--namespace", namespace)
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr and "unreachable" in done.stderr


# -- the metrics endpoints ------------------------------------------------------------------

@pytest.fixture
def served(server: Server, namespace: str, reporting: FleetCache) -> Iterator[int]:
    _serve(reporting)
    lookups = reporting.stats().lookups
    assert wait_until(lambda: view_of(server, namespace).totals()["lookups"] == lookups,
                      timeout=5)
    yield lookups


def _lookups(text: str) -> float:
    got = parsed(text)
    return sum(v for (name, _), v in got.items()
               if name in ("fleetcache_hits_total", "fleetcache_misses_total"))


def test_the_flask_route_serves_the_fleet(
    server: Server, namespace: str, served: int
) -> None:
    app = Flask(__name__)
    app.config.update(FLEETCACHE_REDIS_URL=server.url, FLEETCACHE_NAMESPACE=namespace,
                      FLEETCACHE_STATS_INTERVAL=0)
    ext = FleetCacheExtension(app)
    ext.register_metrics(app)
    try:
        response = app.test_client().get("/metrics")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert _lookups(response.get_data(as_text=True)) == served
    finally:
        ext.cache.close()


def test_the_wsgi_app_and_middleware_serve_the_fleet(reporting: FleetCache, served: int) -> None:
    def call(app: Any, path: str) -> tuple[str, bytes]:
        status: list[str] = []
        body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"},
                            lambda s, headers: status.append(s)))
        return status[0], body

    status, body = call(make_metrics_app(reporting), "/")
    assert status == "200 OK" and _lookups(body.decode()) == served

    def inner(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"app"]

    wrapped = metrics_middleware(inner, lambda: reporting)
    assert call(wrapped, "/other") == ("200 OK", b"app")
    status, body = call(wrapped, "/metrics")
    assert _lookups(body.decode()) == served


def test_the_wsgi_app_answers_503_when_redis_is_down(caches: Callable[..., FleetCache]) -> None:
    app = make_metrics_app(caches(DEAD_URL, stats_interval=0))
    status: list[str] = []
    body = b"".join(app({"PATH_INFO": "/"}, lambda s, h: status.append(s)))
    assert status == ["503 Service Unavailable"] and b"unreadable" in body


def test_the_collector_feeds_a_prometheus_client_registry(
    reporting: FleetCache, served: int
) -> None:
    registry = CollectorRegistry()
    registry.register(FleetCollector(reporting))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert _lookups(text) == served
    assert read_cache_fleet(reporting).totals()["lookups"] == served


def test_two_caches_of_one_process_keep_separate_snapshots(
    server: Server, make_cache: Callable[..., FleetCache]
) -> None:
    ns_a, ns_b = "oa" + uuid.uuid4().hex[:8], "ob" + uuid.uuid4().hex[:8]
    a = make_cache(namespace=ns_a, stats_interval=INTERVAL)
    b = make_cache(namespace=ns_b, stats_interval=INTERVAL)
    a.get("1")
    b.get("1")
    b.get("2")
    assert wait_until(lambda: view_of(server, ns_a).totals()["misses"] == 1
                      and view_of(server, ns_b).totals()["misses"] == 2, timeout=5)
