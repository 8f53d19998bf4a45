"""The demo app under a real gunicorn: 4 workers of each class, with and without --preload.

What a unit test cannot show: the hooks in deploy/gunicorn.conf.py really connect every
worker (after gevent's patching too), a write in one worker reaches every other worker's
L1, a cold key is computed once for the whole fleet, the embedded server lives and dies
with the master, and recycled workers give their connections back.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from ..servers import Server
from .conftest import (
    GONE_TIMEOUT,
    WORKERS,
    Flavor,
    Fleet,
    Proc,
    StartFleet,
    cold_burst,
    poll,
    wait_gone,
)

pytestmark = pytest.mark.slow

INVALIDATION_DELAY = 0.1  # pub/sub on loopback takes milliseconds; this is ~50x that
CONNECTIONS_PER_WORKER = 6  # listener + a few pooled connections
CLIENT_THREADS = 8


# -- a. invalidation across workers ----------------------------------------------------------

def test_write_in_one_worker_is_never_served_stale_by_another(fleet: Fleet) -> None:
    path = f"/product/{uuid.uuid4().int % 10**9}"
    current = 0
    for _ in range(5):
        # Every worker holds the current version in its L1 before the write...
        warm = fleet.until_all_workers(path)
        assert {b["product"]["version"] for b in warm} == {current}, warm
        # ...then one worker writes, and after the invalidation delay nobody serves the old one.
        written = fleet.post(path)["product"]["version"]
        assert written == current + 1
        current = written
        time.sleep(INVALIDATION_DELAY)
        bodies = fleet.get_many([path] * 200, concurrency=CLIENT_THREADS)
        stale = [(b["pid"], b["product"]["version"]) for b in bodies
                 if b["product"]["version"] < written]
        assert not stale, f"{len(stale)} of 200 reads older than version {written}: {stale[:10]}"
        # No writer but us: nothing newer can exist either.
        assert {b["product"]["version"] for b in bodies} == {written}
        pids = {b["pid"] for b in bodies}
        assert len(pids) >= 3, f"200 reads reached only workers {pids}: not a fleet test"

    # The reads above were L1 hits in the workers (else the test proved nothing about L1).
    stats = {b["pid"]: b for b in fleet.until_all_workers("/stats")}
    assert sum(s["l1_hits"] for s in stats.values()) > 0, stats
    assert sum(s["invalidations_received"] for s in stats.values()) > 0, stats


# -- b. stampede -------------------------------------------------------------------------

def test_cold_key_burst_computes_once_for_the_fleet(fleet: Fleet) -> None:
    key, answers, computed = cold_burst(fleet, 32)
    values = [a.body["value"] for a in answers]
    assert all(v == values[0] for v in values), values
    assert values[0]["key"] == key
    assert values[0]["computed_by"] == computed["pid"]


# -- c. the embedded default ---------------------------------------------------------------

def _check_fleet_consistent(fleet: Fleet) -> None:
    """POST in one worker, then every worker reads the new version."""
    path = f"/product/{uuid.uuid4().int % 10**9}"
    fleet.until_all_workers(path)
    written = fleet.post(path)["product"]["version"]
    assert written == 1
    time.sleep(INVALIDATION_DELAY)

    def fresh(body: dict[str, Any]) -> None:
        assert body["product"]["version"] == written, body

    fleet.until_all_workers(path, check=fresh)


def _one_embedded_server(fleet: Fleet) -> Proc:
    servers = fleet.embedded_servers()
    assert len(servers) == 1, (
        f"want one embedded server under the master, got "
        f"{[(p.pid, p.cmdline()) for p in servers]}\n{fleet.log_tail()}"
    )
    return servers[0]


@pytest.mark.parametrize("flavor", [Flavor("gthread"), Flavor("gevent", preload=False)],
                         ids=lambda f: f.id)
def test_embedded_server_lives_and_dies_with_the_master(
    start_fleet: StartFleet, flavor: Flavor
) -> None:
    with start_fleet(flavor, None) as fleet:
        server = _one_embedded_server(fleet)
        _check_fleet_consistent(fleet)
        directories = set(fleet.embedded_dirs)
        assert len(directories) == 1

        fleet.terminate()
        left = wait_gone([server], GONE_TIMEOUT)
        assert not left, f"embedded server {server} alive {GONE_TIMEOUT} s after SIGTERM"
        assert fleet.proc.wait(GONE_TIMEOUT) == 0, fleet.log_tail()
        assert not any(Path(d).exists() for d in directories), "embedded dir not removed"


def test_embedded_server_dies_when_the_master_is_killed(start_fleet: StartFleet) -> None:
    with start_fleet(Flavor("gthread"), None) as fleet:
        server = _one_embedded_server(fleet)
        orphans = fleet.workers()  # found by parent pid while the master still lives
        assert len(orphans) == WORKERS, orphans
        try:
            os.kill(fleet.proc.pid, signal.SIGKILL)
            fleet.proc.wait(GONE_TIMEOUT)
            left = wait_gone([server], GONE_TIMEOUT)
            assert not left, (
                f"embedded server {server.pid} still running {GONE_TIMEOUT} s after its "
                f"master was SIGKILLed (PR_SET_PDEATHSIG)"
            )
        finally:
            for worker in orphans:  # nobody reaps a SIGKILLed master's workers for it
                worker.kill()
            assert not wait_gone(orphans, GONE_TIMEOUT)


# -- d. worker recycling ---------------------------------------------------------------------

@pytest.mark.parametrize("flavor", [Flavor("sync"), Flavor("gthread"), Flavor("gevent")],
                         ids=lambda f: f.id)
def test_recycled_workers_give_their_connections_back(
    start_fleet: StartFleet, own_server: Server, flavor: Flavor
) -> None:
    with start_fleet(flavor, own_server.url, GUNICORN_MAX_REQUESTS="20") as fleet:
        first = {p.pid for p in fleet.workers()}
        paths = [f"/product/{i % 10}" for i in range(200)]
        served = {b["pid"] for b in fleet.get_many(paths, concurrency=4)}

        # A worker past max_requests exits once it notices (the gevent worker looks once a
        # second, so it may serve many more first); the master replaces it. Wait for the
        # fleet to be back to WORKERS live workers, at least one of them new.
        def recycled() -> bool:
            now = {p.pid for p in fleet.workers()}
            return len(now) == WORKERS and bool(now - first)

        assert poll(recycled, timeout=15), (
            f"200 requests at max_requests=20 recycled no worker, or the fleet did not "
            f"settle: first {first}, served by {served}, now {fleet.workers()}\n"
            f"{fleet.log_tail()}"
        )
        fleet.ready_pids.clear()
        fleet.wait_ready()  # the new workers are connected, and answer
        lifetimes = {p.pid for p in fleet.seen} - {fleet.master.pid}

        client = redis.Redis.from_url(own_server.url, socket_timeout=5)
        try:
            bound = WORKERS * CONNECTIONS_PER_WORKER + 2

            counts: list[int] = []

            def settled() -> bool:  # exited workers' sockets close a moment after they exit
                counts.append(len(client.client_list()))
                return WORKERS < counts[-1] <= bound

            poll(settled, timeout=5)
            connections = counts[-1]
            assert WORKERS < connections <= bound, (
                f"{connections} Redis connections for {WORKERS} workers after "
                f"{len(lifetimes)} worker lifetimes (bound {bound}): "
                f"{[c.get('cmd') for c in client.client_list()]}"
            )
        finally:
            client.close()


# -- e. the demo's database under a fleet's first use ---------------------------------------

def _first_use_of_demo_db(path: str, barrier: Any, results: Any) -> None:
    """In a forked child, like a fresh gunicorn worker: open the demo database."""
    import fleetcache.cli.demo_app as demo

    demo.DB_PATH = path
    try:
        barrier.wait(10)
        demo._db().execute("SELECT count(*) FROM product").fetchone()
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_demo_database_survives_concurrent_first_use(tmp_path: Path) -> None:
    """Workers booting together (or recycled) open the SQLite file at the same moment.

    Found by the recycling test: fleetcache/cli/demo_app.py's ``_db()`` answered 500 "database is
    locked" at ``PRAGMA journal_mode=WAL``, which SQLite fails at once (no busy handler)
    when another connection is opening the file; ``timeout=10`` does not cover it.
    """
    import fleetcache.cli.demo_app  # noqa: F401 - imported once here, not in each of 160 children

    ctx = mp.get_context("fork")
    outcomes: list[str] = []
    for trial in range(40):
        path = str(tmp_path / f"demo-{trial}.sqlite3")
        barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
        procs = [ctx.Process(target=_first_use_of_demo_db, args=(path, barrier, results))
                 for _ in range(WORKERS)]
        for proc in procs:
            proc.start()
        try:
            outcomes.extend(results.get(timeout=20) for _ in procs)
        finally:
            for proc in procs:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
    failed = [o for o in outcomes if o != "ok"]
    assert not failed, f"{len(failed)} of {len(outcomes)} first opens failed: {set(failed)}"
