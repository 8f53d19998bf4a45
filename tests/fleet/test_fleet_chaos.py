"""Faults under a real gunicorn fleet (4 gthread workers, the deploy/ demo app).

What unit and proxy tests cannot show: a whole fleet, serving, rides out its Redis being
SIGKILLed and restarted (reads degrade to compute/L1, every worker's listener comes back by
itself, nothing from before the outage is served afterwards), and a SIGKILLed worker or a
master HUP reload leaves no Redis connection behind, with the new workers fully in the
invalidation fleet.

Numbers measured here are printed (``-s``) and quoted in the failure messages.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import sqlite3
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from ..servers import Server
from .conftest import WORKERS, Flavor, Fleet, Proc, Response, StartFleet, poll, wait_gone

pytestmark = pytest.mark.slow

monotonic = time.monotonic

FLAVOR = Flavor("gthread")  # 8 threads per worker, --preload
CLIENT_THREADS = 8
PRODUCTS = list(range(1, 51))
HOT = PRODUCTS[0]  # the product changed in the database during the outage
OUTAGE = 2.0
# README: a worker serves an invalidated value for at most
# max(health_check_interval + health_check_timeout, degraded_l1_ttl) = 1.5 s by default.
STALENESS_BOUND = 1.5
SLACK = 1.0  # scheduling slack: 2 shared cores, 8 client threads, 4 workers, a server
# Listener reconnect attempts back off up to reconnect_backoff (1 s): every worker must be
# resubscribed within that, plus the slack, of the server answering again.
RECOVERY_BOUND = 1.0 + 1.5
INVALIDATION_DELAY = 0.1  # pub/sub on loopback takes milliseconds; this is ~50x that
LOAD_REQUEST_TIMEOUT = 10.0


# -- helpers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One GET of a product by the load."""

    start: float
    end: float
    product: int
    status: int | None  # None: no HTTP answer at all
    pid: int | None
    version: int | None
    error: str | None


class Load:
    """``CLIENT_THREADS`` threads looping GET /product/<id>; every fourth request is HOT."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.samples: list[Sample] = []  # list.append is atomic under the GIL
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"fleet-load-{i}")
                         for i in range(CLIENT_THREADS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(LOAD_REQUEST_TIMEOUT + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread is stuck"

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        i = 0
        while not self._stop.is_set():
            i += 1
            product = HOT if i % 4 == 0 else rng.choice(PRODUCTS)
            start = monotonic()
            try:
                resp = self.fleet.request("GET", f"/product/{product}",
                                          timeout=LOAD_REQUEST_TIMEOUT)
            except (OSError, http.client.HTTPException) as exc:
                self.samples.append(Sample(start, monotonic(), product, None, None, None,
                                           repr(exc)))
                continue
            body = resp.body
            ok = resp.status == 200 and isinstance(body.get("product"), dict)
            self.samples.append(Sample(
                start, monotonic(), product, resp.status, body.get("pid"),
                body["product"].get("version") if ok else None,
                None if ok else f"{resp.status} {str(body)[:300]}",
            ))

    def failures(self) -> list[Sample]:
        return [s for s in list(self.samples) if s.error is not None]

    def hot(self) -> list[Sample]:
        return [s for s in list(self.samples) if s.product == HOT and s.error is None]


def batch(fleet: Fleet, paths: list[str], timeout: float = 5.0
          ) -> list[tuple[str, float, Response | None, str | None]]:
    """GET every path concurrently: (path, monotonic time answered, response, error)."""

    def one(path: str) -> tuple[str, float, Response | None, str | None]:
        try:
            resp = fleet.request("GET", path, timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            return path, monotonic(), None, repr(exc)
        if resp.status != 200:
            return path, monotonic(), resp, f"{resp.status} {resp.body}"
        return path, monotonic(), resp, None

    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(one, paths))


def write_db(path: Path, product: int) -> int:
    """version + 1 for ``product`` straight in the demo's SQLite file; the new version."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("INSERT INTO product (id, version) VALUES (?, 1) "
                     "ON CONFLICT(id) DO UPDATE SET version = version + 1", (product,))
        return int(conn.execute("SELECT version FROM product WHERE id = ?",
                                (product,)).fetchone()[0])
    finally:
        conn.close()


def errors_in_log(path: Path, blocks: int = 2) -> str:
    """The first tracebacks the app logged (Flask logs a 500's exception), for messages."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no gunicorn log)"
    found: list[str] = []
    i = 0
    while i < len(lines) and found.count("") < blocks:
        if "Exception on" in lines[i] or lines[i].startswith("Traceback"):
            block = [lines[i]]
            i += 1
            while i < len(lines) and (lines[i].startswith((" ", "Traceback", "During"))
                                      or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])  # the exception itself
            found += [*block, ""]
        i += 1
    return ("--- tracebacks in the gunicorn log ---\n" + "\n".join(found)) if found else (
        "(no traceback in the gunicorn log)")


def worker_pids(fleet: Fleet) -> set[int]:
    return {p.pid for p in fleet.workers()}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def watch_outage(fleet: Fleet, until: float) -> set[int]:
    """Poll /health (every answer must come) until ``until``; the workers seen reporting
    Redis and the bus down."""
    down_seen: set[int] = set()
    while monotonic() < until:
        for _, _, resp, err in batch(fleet, ["/health"] * 4, timeout=3.0):
            assert err is None, f"/health failed during the outage: {err}"
            assert resp is not None
            if not resp.body["redis_ok"] and not resp.body["bus_connected"]:
                down_seen.add(resp.body["pid"])
        time.sleep(0.05)
    return down_seen


def wait_recovered(fleet: Fleet, pids: set[int], t_restart: float) -> dict[int, float]:
    """Until every worker said redis_ok + bus_connected and counted a reconnect; per worker,
    how long after ``t_restart`` both were first seen."""
    bus_ok_at: dict[int, float] = {}
    reconnected_at: dict[int, float] = {}
    last: dict[int, Any] = {}
    while True:
        for path, at, resp, err in batch(fleet, ["/health", "/stats"] * 4):
            assert err is None, f"GET {path} failed during recovery: {err}"
            assert resp is not None
            pid = resp.body["pid"]
            last[pid] = resp.body
            if path == "/health" and resp.body["ok"]:
                bus_ok_at.setdefault(pid, at)
            if path == "/stats" and resp.body["reconnects"] >= 1:
                reconnected_at.setdefault(pid, at)
        healthy = {p for p in pids if p in bus_ok_at and p in reconnected_at}
        if healthy == pids:
            return {p: max(bus_ok_at[p], reconnected_at[p]) - t_restart for p in pids}
        assert monotonic() < t_restart + 20, (
            f"only {sorted(healthy)} of {sorted(pids)} workers recovered 20 s after the "
            f"restart: last answers {last}\n{fleet.log_tail()}")


def wait_fresh(fleet: Fleet, load: Load, pids: set[int], version: int, since: float
               ) -> dict[int, float]:
    """Until every worker served HOT at ``version`` to a request started after ``since``
    (the load's requests count too); when each was first seen doing so."""
    fresh_at: dict[int, float] = {}
    while True:
        for _, at, resp, err in batch(fleet, [f"/product/{HOT}"] * 8):
            assert err is None, err
            assert resp is not None
            if resp.body["product"]["version"] == version:
                fresh_at.setdefault(resp.body["pid"], at)
        for s in load.hot():
            if s.version == version and s.pid is not None and s.start >= since:
                fresh_at[s.pid] = min(fresh_at.get(s.pid, s.end), s.end)
        if pids <= set(fresh_at):
            return fresh_at
        assert monotonic() < since + 20, (
            f"only {sorted(fresh_at)} of {sorted(pids)} serve HOT v{version} 20 s after "
            f"recovery\n{fleet.log_tail()}")


# -- a. Redis SIGKILLed under load ----------------------------------------------------------

def test_redis_killed_under_load_and_restarted(
    start_fleet: StartFleet, own_server: Server, tmp_path: Path
) -> None:
    db = tmp_path / "demo.sqlite3"
    with start_fleet(FLAVOR, own_server.url, FLEETCACHE_DEMO_DB=str(db)) as fleet:
        pids = worker_pids(fleet)
        assert len(pids) == WORKERS, pids
        # Precondition, so that "reconnects >= 1" below proves a reconnect after the restart.
        before = {b["pid"]: b for b in fleet.until_all_workers("/stats")}
        assert all(s["reconnects"] == 0 for s in before.values()), before
        v_old = fleet.post(f"/product/{HOT}")["product"]["version"]

        with Load(fleet) as load:
            # Every worker serves HOT (so holds it in L1) before the fault.
            def hot_everywhere() -> bool:
                return pids <= {s.pid for s in load.hot() if s.version == v_old}

            assert poll(hot_everywhere, timeout=30), (
                f"HOT v{v_old} served by only {sorted({s.pid for s in load.hot()})} of "
                f"{sorted(pids)}\n{fleet.log_tail()}")

            t_kill = monotonic()
            own_server.kill()
            v_new = write_db(db, HOT)  # behind the cache's back, while Redis is down
            t_written = monotonic()
            assert v_new == v_old + 1
            down_seen = watch_outage(fleet, until=t_kill + OUTAGE)
            own_server.start()
            t_restart = monotonic()
            recovery = wait_recovered(fleet, pids, t_restart)
            t_healthy = t_restart + max(recovery.values())
            # HOT changed in the database during the outage: every worker serves it fresh.
            fresh_at = wait_fresh(fleet, load, pids, v_new, since=t_healthy)
            t_all_fresh = max(fresh_at[p] for p in pids)
            t_stopped = monotonic()
        log_path = fleet.log_path

        stats = {b["pid"]: b for b in fleet.until_all_workers("/stats")}
        assert worker_pids(fleet) == pids, "a worker died or was replaced during the outage"

    samples = list(load.samples)
    failed = load.failures()
    during = [s.end - s.start for s in samples if t_kill <= s.start < t_restart]
    latencies = [s.end - s.start for s in samples]
    stale_late = [s for s in load.hot() if s.version is not None and s.version < v_new
                  and s.start > t_written + STALENESS_BOUND]
    last_stale = max((s.start - t_written for s in load.hot()
                      if s.version is not None and s.version < v_new
                      and s.start > t_written), default=None)
    summary = (
        f"{len(samples)} GETs ({len(during)} during the {OUTAGE} s outage), "
        f"{len(failed)} failed; latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.0f} ms, during the outage p99 "
        f"{percentile(during, 0.99) * 1000:.0f} ms max {max(during, default=0) * 1000:.0f} "
        f"ms; bus down seen in {len(down_seen)} workers; recovery after restart "
        f"{', '.join(f'{r:.3f}' for r in sorted(recovery.values()))} s (all: "
        f"{max(recovery.values()):.3f} s); HOT v{v_new} from all workers "
        f"{t_all_fresh - t_restart:.3f} s after restart, {t_all_fresh - t_healthy:.3f} s "
        f"after all healthy; last stale HOT read started "
        f"{'never' if last_stale is None else f'{last_stale:.3f} s'} after the DB write; "
        f"redis_errors {sum(s['redis_errors'] for s in stats.values())}, reconnects "
        f"{[stats[p]['reconnects'] for p in sorted(pids)]}; load ran "
        f"{t_stopped - t_kill:.1f} s from the kill"
    )
    print(f"\nredis killed under load: {summary}")
    assert not failed, (
        f"{len(failed)} failed GETs, e.g. {failed[:3]} (started "
        f"{[round(s.start - t_kill, 3) for s in failed[:10]]} s after the kill): {summary}\n"
        f"{errors_in_log(log_path)}")
    assert len(during) >= 20, f"the load barely ran during the outage: {summary}"
    assert sum(s["redis_errors"] for s in stats.values()) > 0, (
        f"no worker saw the outage (reads never degraded): {summary}")
    assert all(s["reconnects"] >= 1 for s in stats.values()), summary
    assert max(recovery.values()) <= RECOVERY_BOUND, (
        f"workers recovered {max(recovery.values()):.3f} s after the restart, bound "
        f"{RECOVERY_BOUND} s: {summary}")
    assert not stale_late, (
        f"{len(stale_late)} reads of HOT started more than {STALENESS_BOUND} s after the "
        f"database write served v{v_old}: {stale_late[:5]}; {summary}")
    assert t_all_fresh - t_healthy <= STALENESS_BOUND + SLACK, (
        f"HOT v{v_new} reached every worker {t_all_fresh - t_healthy:.3f} s after recovery, "
        f"bound {STALENESS_BOUND} + {SLACK} s: {summary}")


# -- b. a worker SIGKILLed, a master HUP ------------------------------------------------------

def exercise(fleet: Fleet) -> None:
    """The same traffic before and after each fault: 64 product reads, 8 at a time."""
    fleet.get_many([f"/product/{PRODUCTS[i % 10]}" for i in range(64)], concurrency=8)


def redis_clients(raw: redis.Redis) -> tuple[int, int]:
    """(all client connections, subscribed ones) on the server, our own raw one included."""
    clients = raw.client_list()
    return len(clients), sum(1 for c in clients if int(c.get("sub", 0) or 0) > 0)


def settle_connections(raw: redis.Redis, bound: int, timeout: float = 10.0
                       ) -> tuple[int, int, list[tuple[int, int]]]:
    """Poll until at most ``bound`` connections and exactly one listener per worker."""
    seen: list[tuple[int, int]] = []

    def settled() -> bool:
        seen.append(redis_clients(raw))
        total, subscribed = seen[-1]
        return total <= bound and subscribed == WORKERS

    poll(settled, timeout=timeout, interval=0.1)
    return seen[-1][0], seen[-1][1], seen


def wait_replaced(fleet: Fleet, gone: set[int], timeout: float = 30.0) -> set[int]:
    """Until WORKERS live workers, none of ``gone`` among them, each answering /health ok."""
    ok_from: set[int] = set()
    deadline = monotonic() + timeout
    while True:
        now = worker_pids(fleet)
        if len(now) == WORKERS and not now & gone:
            for _, _, resp, _ in batch(fleet, ["/health"] * 8):
                if resp is not None and resp.status == 200 and resp.body.get("ok"):
                    ok_from.add(resp.body["pid"])
            if now <= ok_from:
                return now
        assert monotonic() < deadline, (
            f"fleet not back to {WORKERS} healthy new workers in {timeout} s: workers "
            f"{sorted(now)}, gone {sorted(gone)}, healthy {sorted(ok_from)}\n{fleet.log_tail()}")
        time.sleep(0.05)


def check_write_reaches_every_worker(fleet: Fleet, product: int) -> dict[str, Any]:
    """Every worker holds ``product`` in L1, one worker writes it, no worker serves the old
    version once INVALIDATION_DELAY has passed (reads are timestamped, not slept on)."""
    path = f"/product/{product}"
    pids = worker_pids(fleet)
    warm = fleet.until_all_workers(path)
    current = {b["product"]["version"] for b in warm}
    assert len(current) == 1, f"workers disagree before the write: {warm}"
    written = fleet.post(path)["product"]["version"]
    assert written == current.pop() + 1
    t_written = monotonic()
    early_stale = 0
    fresh_from: set[int] = set()
    deadline = t_written + 20
    reads = 0
    while not pids <= fresh_from:
        assert monotonic() < deadline, f"v{written} not read from every worker: {fresh_from}"
        started = monotonic()
        for _, _, resp, err in batch(fleet, [path] * 8):
            assert err is None, err
            assert resp is not None
            reads += 1
            version = resp.body["product"]["version"]
            if version < written:
                assert started < t_written + INVALIDATION_DELAY, (
                    f"worker {resp.body['pid']} served v{version} of {path} "
                    f"{started - t_written:.3f} s after v{written} was written")
                early_stale += 1
            elif started >= t_written + INVALIDATION_DELAY:
                fresh_from.add(resp.body["pid"])
    return {"reads": reads, "early_stale": early_stale}


def check_recovered(
    fleet: Fleet, raw: redis.Redis, before: int, report: list[str], product: int, *,
    fault: str, healthy: str, after: str, short: str,
) -> None:
    """After a fault the fleet got over: with the same traffic as before it, at most one
    connection more per worker than ``before`` and one listener per worker, and a write of
    ``product`` reaches every worker (both noted in ``report``).

    A new worker's command lane keeps as many idle connections as it once needed at the
    same time, which depends on how the traffic fell on it: one more than its predecessor
    is not a leak (a leaked generation would be a whole ``before`` more)."""
    exercise(fleet)
    bound = before + WORKERS
    total, subscribed, seen = settle_connections(raw, bound=bound)
    report.append(f"{fault}: {healthy}, {total} connections ({subscribed} listeners)")
    assert total <= bound and subscribed == WORKERS, (
        f"after {after}: {total} connections, {subscribed} listeners "
        f"(before: {before}, {WORKERS}); last counts {seen[-5:]}; "
        f"clients {[c.get('cmd') for c in raw.client_list()]}")
    outcome = check_write_reaches_every_worker(fleet, product)
    report.append(f"write after {short}: {outcome}")


def test_worker_kill_and_hup_reload_leak_no_connections(
    start_fleet: StartFleet, own_server: Server, tmp_path: Path
) -> None:
    raw = redis.Redis.from_url(own_server.url, socket_timeout=5)
    report: list[str] = []
    try:
        with start_fleet(FLAVOR, own_server.url,
                         FLEETCACHE_DEMO_DB=str(tmp_path / "demo.sqlite3")) as fleet:
            exercise(fleet)
            exercise(fleet)
            total, subscribed, seen = settle_connections(raw, bound=10**6)
            assert subscribed == WORKERS, f"listeners: {seen[-5:]}"
            before = total
            report.append(f"before: {before} connections ({subscribed} listeners)")

            # 1. SIGKILL one worker: the master replaces it.
            victim = sorted(fleet.workers(), key=lambda p: p.pid)[0]
            os.kill(victim.pid, signal.SIGKILL)
            t0 = monotonic()
            assert not wait_gone([victim], 10), f"worker {victim.pid} survived SIGKILL"
            pids = wait_replaced(fleet, {victim.pid})
            back = monotonic() - t0
            check_recovered(fleet, raw, before, report, PRODUCTS[1], fault="worker kill",
                            healthy=f"4 healthy after {back:.2f} s",
                            after="a worker was SIGKILLed", short="kill")

            # 2. HUP the master: a new generation of workers, the old ones stop gracefully.
            old = [Proc.of(p) for p in pids]
            os.kill(fleet.master.pid, signal.SIGHUP)
            t0 = monotonic()
            new = wait_replaced(fleet, pids)
            back = monotonic() - t0
            left = wait_gone([p for p in old if p is not None], 15)
            assert not left, f"old workers still running after HUP: {left}"
            check_recovered(fleet, raw, before, report, PRODUCTS[2], fault="HUP",
                            healthy=f"{len(new)} new healthy workers after {back:.2f} s",
                            after="a HUP reload", short="HUP")
            # The product written before the reload, too: the new generation reads it fresh.
            check_write_reaches_every_worker(fleet, PRODUCTS[1])
        # The fleet is stopped: its connections must all be gone (only ours is left).
        total, _, seen = settle_connections_gone(raw)
        report.append(f"after stop: {total} connections")
        assert total == 1, f"connections left after the fleet stopped: {seen[-5:]}"
    finally:
        print("\nworker kill / HUP: " + "; ".join(report))
        raw.close()


def settle_connections_gone(raw: redis.Redis) -> tuple[int, int, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []

    def gone() -> bool:
        seen.append(redis_clients(raw))
        return seen[-1][0] == 1

    poll(gone, timeout=10, interval=0.1)
    return seen[-1][0], seen[-1][1], seen
