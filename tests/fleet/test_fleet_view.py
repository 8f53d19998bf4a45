"""The fleet view of real gunicorn fleets: the Flask demo app and the Django test app, 4
workers each, show in ``fleetcache stats --json`` and in their own ``/metrics`` with sums
equal to what the workers served, and recycled workers leave the view while their counts
stay in the host's totals."""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetcache.observe.snapshot import hostname

from ..servers import Server
from .conftest import (
    WORKERS,
    Flavor,
    Fleet,
    StartFleet,
    gunicorn_fleet,
    poll,
)

pytestmark = pytest.mark.slow

INTERVAL = "0.3"  # seconds between reports: the view lags what was served by about this
HOST = hostname()
REQUESTS = 120


def stats_json(url: str, namespace: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "fleetcache", "stats", "--url", url,
                           "--namespace", namespace, "--json"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def metrics_of(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    conn = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, text
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def served_lookups(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    host = (("host", HOST),)
    return (metrics[("fleetcache_hits_total", (*host, ("tier", "l1")))]
            + metrics[("fleetcache_hits_total", (*host, ("tier", "l2")))]
            + metrics[("fleetcache_misses_total", host)])


def check_view(fleet: Fleet, url: str, namespace: str, lookups: int) -> None:
    """``fleetcache stats --json`` and the fleet's own ``/metrics`` both add up to
    ``lookups``, over every live worker."""
    pids = {p.pid for p in fleet.workers()}

    def settled() -> dict[str, Any] | None:
        doc = stats_json(url, namespace)
        done = ({w["pid"] for w in doc["workers"]} == pids
                and doc["totals"]["lookups"] == lookups)
        return doc if done else None

    doc = poll(settled, timeout=15, interval=0.2)
    last = stats_json(url, namespace)
    assert doc, (f"the view never added up to {lookups} lookups over workers {sorted(pids)}: "
                 f"{last['totals']} from {[w['pid'] for w in last['workers']]}")
    rows = doc["workers"]
    assert {w["host"] for w in rows} == {HOST} and len(rows) == WORKERS
    assert sum(w["l1_hits"] + w["l2_hits"] + w["misses"] for w in rows) == lookups
    assert doc["totals"]["l1_hits"] > 0  # warm keys were L1 hits in the workers
    assert all(w["bus_connected"] for w in rows)

    metrics = metrics_of(fleet)
    assert served_lookups(metrics) == lookups
    assert metrics[("fleetcache_workers", (("host", HOST),))] == WORKERS
    assert metrics[("fleetcache_l1_entries", (("host", HOST),))] == doc["totals"]["l1_size"]


def test_the_flask_fleet_shows_in_stats_and_metrics(
    start_fleet: StartFleet, fleet_server: Server
) -> None:
    namespace = "fv" + uuid.uuid4().hex[:10]
    with start_fleet(Flavor("gthread"), fleet_server.url, namespace,
                     FLEETCACHE_STATS_INTERVAL=INTERVAL) as fleet:
        fleet.get_many([f"/product/{i % 15}" for i in range(REQUESTS)])
        check_view(fleet, fleet_server.url, namespace, REQUESTS)


def test_recycled_workers_leave_the_view_and_keep_their_counts(
    start_fleet: StartFleet, fleet_server: Server
) -> None:
    namespace = "fr" + uuid.uuid4().hex[:10]
    with start_fleet(Flavor("sync"), fleet_server.url, namespace, GUNICORN_MAX_REQUESTS="15",
                     FLEETCACHE_STATS_INTERVAL=INTERVAL) as fleet:
        first = {p.pid for p in fleet.workers()}
        fleet.get_many([f"/product/{i % 15}" for i in range(REQUESTS)], concurrency=4)
        assert poll(lambda: len({p.pid for p in fleet.workers()} - first) > 0, timeout=15)
        workers = (("host", HOST),)

        # Every lookup of every worker, gone or alive: the gone ones retired theirs on exit
        # (worker_exit), so the host's counters never went down; the view shows only the
        # workers alive now.
        def settled() -> bool:
            metrics = metrics_of(fleet)
            live = {p.pid for p in fleet.workers()}
            shown = {w["pid"] for w in stats_json(fleet_server.url, namespace)["workers"]}
            return (served_lookups(metrics) == REQUESTS and shown == live
                    and metrics[("fleetcache_workers", workers)] == WORKERS)

        assert poll(settled, timeout=15, interval=0.2), (
            metrics_of(fleet), stats_json(fleet_server.url, namespace))
        doc = stats_json(fleet_server.url, namespace)
        assert not {w["pid"] for w in doc["workers"]} & first - {p.pid for p in fleet.workers()}
        retired = doc["retired"][HOST]
        gone = retired.get("l1_hits", 0) + retired.get("l2_hits", 0) + retired.get("misses", 0)
        assert gone > 0 and gone + doc["totals"]["lookups"] == REQUESTS


def django_fleet(
    workdir: Path, url: str, namespace: str
) -> contextlib.AbstractContextManager[Fleet]:
    """A gthread fleet of the Django app with /metrics (tests/fleet/django_metrics_app.py)."""
    return gunicorn_fleet(workdir, Flavor("gthread"), url, namespace,
                          {"FLEETCACHE_STATS_INTERVAL": INTERVAL},
                          app="tests.fleet.django_metrics_app:application")


def test_the_django_fleet_shows_in_stats_and_metrics(
    fleet_server: Server, tmp_path: Path
) -> None:
    namespace = "fd" + uuid.uuid4().hex[:10]
    with django_fleet(tmp_path, fleet_server.url, namespace) as fleet:
        keys = [uuid.uuid4().hex for _ in range(5)]
        for key in keys:
            fleet.post(f"/item/{key}?value=v")
        fleet.get_many([f"/item/{keys[i % 5]}" for i in range(REQUESTS)])
        check_view(fleet, fleet_server.url, namespace, REQUESTS)
