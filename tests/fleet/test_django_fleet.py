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
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ..servers import Server, free_port
from .conftest import (
    REPO,
    WORKERS,
    Flavor,
    Fleet,
    Proc,
    Response,
    fleet_env,
    gunicorn_command,
)

pytestmark = pytest.mark.slow

APP = "tests.fleet.django_app:application"
INVALIDATION_DELAY = 0.1  # pub/sub on loopback takes milliseconds; this is ~50x that


@contextlib.contextmanager
def django_fleet(workdir: Path, flavor: Flavor, redis_url: str) -> Iterator[Fleet]:
    """:func:`tests.fleet.conftest.gunicorn_fleet`, serving the Django app instead of the
    demo app: ready when every worker answered /health, stopped and checked after."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"gunicorn-{port}.log"
    env = fleet_env(port, flavor, redis_url=redis_url, namespace="d" + uuid.uuid4().hex[:12],
                    db_path=workdir / "unused.sqlite3")
    command = gunicorn_command()
    assert command[-1].endswith(":app"), command  # the demo app, swapped for ours
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*command[:-1], APP], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    master = Proc.of(proc.pid)
    assert master is not None, "gunicorn master vanished at once"
    fleet = Fleet(proc, port, log_path, master)
    ok = False
    try:
        fleet.wait_ready()
        assert f"Using worker: {flavor.worker_class}" in log_path.read_text(errors="replace")
        yield fleet
        ok = True
    finally:
        left = fleet.stop()
        if ok:
            assert not left, f"processes left after gunicorn stopped: {left}\n{fleet.log_tail()}"


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
    key = uuid.uuid4().hex
    clients = 24
    barrier = threading.Barrier(clients)

    def one(_: int) -> Response:
        barrier.wait(timeout=30)
        return fleet.request("GET", f"/burst/{key}?ms=300", timeout=60)

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(clients)))
    failed = [(a.status, a.body) for a in answers if a.status != 200]
    assert not failed, f"{failed}\n{fleet.log_tail()}"
    computed = [a.body for a in answers if a.body["computed"]]
    assert len(computed) == 1, f"{len(computed)} computes of one cold key: {computed}"
    assert {a.body["value"]["computed_by"] for a in answers} == {computed[0]["pid"]}
    assert len({a.body["pid"] for a in answers}) >= 2, "the burst reached one worker only"
