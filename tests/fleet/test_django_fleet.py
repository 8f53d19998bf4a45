"""A Django app (tests/fleet/django_app.py) on ``fleetcache.django.FleetCacheBackend`` under a
real gunicorn: 4 workers, sync, gthread (8 threads each) and gevent.

What only a real fleet shows: a delete through one worker drops the key from every other
worker's L1 (seen by looking into each worker's L1 *before* it reads), values pickled and
signed in one worker are read by every other (each derives the same key from SECRET_KEY),
every thread of a worker shares one FleetCache although Django builds a backend per
thread, and ``get_or_set`` with a callable computes a cold key once for the whole fleet.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..servers import Server
from .conftest import (
    WORKERS,
    Flavor,
    Fleet,
    cold_burst,
    gunicorn_fleet,
)

pytestmark = pytest.mark.slow

APP = "tests.fleet.django_app:application"
INVALIDATION_DELAY = 0.1  # pub/sub on loopback takes milliseconds; this is ~50x that


def django_fleet(
    workdir: Path, flavor: Flavor, redis_url: str
) -> contextlib.AbstractContextManager[Fleet]:
    """:func:`tests.fleet.conftest.gunicorn_fleet`, serving the Django app instead of the
    demo app."""
    return gunicorn_fleet(workdir, flavor, redis_url, "d" + uuid.uuid4().hex[:12], app=APP)


FLAVORS = [Flavor("sync"), Flavor("gthread"), Flavor("gevent", preload=False)]


@pytest.fixture(scope="module", params=FLAVORS, ids=lambda f: f.id)
def fleet(request: pytest.FixtureRequest, fleet_server: Server,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    flavor: Flavor = request.param
    with django_fleet(tmp_path_factory.mktemp(flavor.id), flavor, fleet_server.url) as f:
        yield f


def _every_worker_holds(fleet: Fleet, key: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """GET the key until every worker has answered with it in its L1 (a read racing the
    write's own notice is not promoted: that worker is simply asked again)."""
    holders: set[int] = set()
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(holders) < WORKERS:
        assert time.monotonic() < deadline, f"only {holders} hold {key}\n{fleet.log_tail()}"
        batch = fleet.get_many([f"/item/{key}"] * 8)
        bodies.extend(batch)
        holders.update(b["pid"] for b in batch if b["in_l1_after"])
    return bodies


def test_a_delete_through_one_worker_reaches_every_other_workers_l1(fleet: Fleet) -> None:
    key = uuid.uuid4().hex
    writer = fleet.post(f"/item/{key}?value=v1")["pid"]
    warm = _every_worker_holds(fleet, key)
    assert {tuple(b["value"]) for b in warm} == {("v1", writer)}  # a signed pickle, read by all

    deleter = fleet.post(f"/delete/{key}")
    assert deleter["existed"] is True
    time.sleep(INVALIDATION_DELAY)

    # Looked at before any read: the notice, not a read, emptied each L1.
    def gone(body: dict[str, Any]) -> None:
        assert body["in_l1"] is False, f"worker {body['pid']} still holds {key} in L1"

    peeks = fleet.until_all_workers(f"/peek/{key}", check=gone)
    assert {b["pid"] for b in peeks} - {deleter["pid"]}, "no other worker was looked at"
    reads = fleet.until_all_workers(f"/item/{key}")
    assert {b["pid"]: b["value"] for b in reads} == dict.fromkeys({b["pid"] for b in reads})

    stats = {b["pid"]: b for b in fleet.until_all_workers("/stats")}
    assert sum(s["invalidations_received"] for s in stats.values()) >= WORKERS - 1, stats
    assert sum(s["l1_hits"] for s in stats.values()) > 0, stats


def test_every_thread_of_a_worker_shares_one_fleetcache(fleet: Fleet) -> None:
    key = uuid.uuid4().hex
    fleet.post(f"/item/{key}?value=v")
    ids: dict[int, set[int]] = defaultdict(set)
    for _ in range(4):
        for body in fleet.get_many([f"/item/{key}"] * 16, concurrency=16):
            ids[body["pid"]].add(body["cache_id"])
    assert len(ids) >= 2, ids
    assert all(len(found) == 1 for found in ids.values()), ids


def test_get_or_set_computes_a_cold_key_once_for_the_fleet(fleet: Fleet) -> None:
    _, answers, computed = cold_burst(fleet, 24)
    assert {a.body["value"]["computed_by"] for a in answers} == {computed["pid"]}
