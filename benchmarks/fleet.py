"""6. Fleet: gunicorn, 4 workers (gthread and gevent), a Flask endpoint over 10,000 zipf keys.

The app (benchmarks/apps/fleet_app.py) reads a versioned SQLite "database" with 5 ms of
simulated latency per call; 2% of requests are writes that bump the version and update the
cache (invalidating every other worker's L1 for fleetcache). gunicorn runs with
benchmarks/apps/gunicorn_conf.py, i.e. with fleetcache's hooks (``fleetcache.gunicorn``).
Variants, compared in one run: fleetcache (default settings: an L1 of 2,000 entries per
worker, a fifth of the keys); fleetcache with ``sync_strategy="update"`` (writes send their
values); fleetcache with an L1 that holds every key (what eviction costs against the dict,
which holds every key too); Flask-Caching RedisCache; no cache; a per-process dict memo
never invalidated (the ceiling). "L2 reads per write" is each variant's Redis reads (L2 hits
+ misses) over the writes of the run: what an invalidation costs the fleet afterwards.
"CPU us/req" splits the machine's CPU per request between the gunicorn workers, the Redis
server and the load generator (each process's user + system time over the measured
window): on this 2-core VM the fleet is CPU-bound, so RPS is 2 cores over that sum.

Load comes from a separate process at fixed concurrency for a fixed time, after a warm-up:
wrk with benchmarks/apps/zipf.lua when ``wrk`` is on PATH, else a Python load generator
(``python -m benchmarks.fleet --loadgen``, 2 processes). Reported per variant: RPS, latency
p50/p90/p99/max, errors, hit rate per tier (from each worker's counters, via
``/bench/stats`` before and after), and stale reads: a read that returned a version older
than the database's version at the moment the request started, counted beyond
``STALE_BOUND_S`` (the invalidation bound granted) and beyond fleetcache's documented
worst case (1.5 s). The dict ceiling is never invalidated, so its stale reads are expected.

Rounds are the outer loop (each round boots every variant afresh, in a rotated order), so
drift of a shared machine hits every variant; ratios are per round, then the median.

    python -m benchmarks.fleet [--quick] [--worker-class gthread|gevent]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - the app's packages stay out of the load generator
import argparse
import bisect
import contextlib
import http.client
import itertools
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetcache.server.processes import stop
from tests.servers import free_port

from . import harness as h

NAME = "fleet"
ROUNDS = (1, 5)  # (--quick, full): the fleet is the noisiest measurement here
WORKERS = 4
THREADS = 8
KEYS = 10_000
ZIPF_S = 1.1
WRITE_SHARE = 0.02
CONCURRENCY = 32
DB_MS = 5
STALE_BOUND_S = 0.1  # generous for a loaded 2-core box; invalidation.py measures ~1 ms
DOCUMENTED_BOUND_S = 1.5  # README: max(health_check_interval + timeout, degraded_l1_ttl)
VARIANTS = ("fleetcache", "fleetcache-update", "fleetcache-10k", "flask-caching", "none",
            "dict")
LABELS = {"fleetcache": "fleetcache", "fleetcache-update": 'fleetcache sync_strategy="update"',
          "fleetcache-10k": "fleetcache l1_capacity=10,000 (every key fits)",
          "flask-caching": "Flask-Caching RedisCache",
          "none": "no cache", "dict": "dict memo (ceiling, never invalidated)"}
WORKER_CLASSES = ("gthread", "gevent")
APPS = Path(__file__).resolve().parent / "apps"


# -- gunicorn ---------------------------------------------------------------------------------


def create_db(path: str, keys: int) -> None:
    """A fresh database for the app: ``keys`` items at version 1."""
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO item (id, version) VALUES (?, 1)",
                   ((i,) for i in range(1, keys + 1)))
    db.execute("COMMIT")
    db.close()


@contextlib.contextmanager
def gunicorn(variant: str, worker_class: str, url: str,
             tmp: str) -> Iterator[tuple[int, str, int]]:
    """Boot the app; yields (port, dump dir, master pid); on exit stops it (workers dump
    their logs)."""
    port = free_port()
    out = tempfile.mkdtemp(prefix=f"{variant}-", dir=tmp)
    db = os.path.join(out, "db.sqlite3")
    create_db(db, KEYS)
    env = dict(os.environ, BENCH_BIND=f"127.0.0.1:{port}", BENCH_WORKERS=str(WORKERS),
               BENCH_WORKER_CLASS=worker_class, BENCH_THREADS=str(THREADS),
               BENCH_CACHE=variant, BENCH_DB=db, BENCH_DB_MS=str(DB_MS), BENCH_OUT=out,
               BENCH_NS=f"fleet-{variant}-{os.getpid()}", FLEETCACHE_REDIS_URL=url,
               PYTHONPATH=os.pathsep.join(
                   p for p in (str(h.ROOT), os.environ.get("PYTHONPATH")) if p))
    master = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(APPS / "gunicorn_conf.py"),
         "benchmarks.apps.fleet_app:app"],
        cwd=h.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    errors: list[str] = []
    drain = threading.Thread(target=_drain, args=(master, errors), daemon=True)
    drain.start()
    try:
        _wait_ready(port, master, errors)
        yield port, out, master.pid
    finally:
        stop(master, grace=30)
        drain.join(5)
        if errors:
            (Path(out) / "gunicorn-stderr.txt").write_text("".join(errors))


def _drain(master: subprocess.Popen[bytes], into: list[str]) -> None:
    assert master.stderr is not None
    for line in master.stderr:
        into.append(line.decode(errors="replace"))


def _get_json(port: int, path: str, timeout: float = 5.0) -> dict[str, Any]:
    """One GET on a new connection (a new connection may land on any worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status}")
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        conn.close()


def _wait_ready(port: int, master: subprocess.Popen[bytes], errors: list[str]) -> None:
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while time.monotonic() < deadline and len(seen) < WORKERS:
        if master.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {master.returncode}:\n"
                               + "".join(errors)[-3000:])
        try:
            seen.add(_get_json(port, "/bench/stats", 2)["pid"])
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.05)
    if len(seen) < WORKERS:
        raise RuntimeError(f"only {len(seen)} of {WORKERS} workers answered in 60 s")


def snapshot(port: int, seconds: float = 5.0) -> dict[int, dict[str, Any]]:
    """Every worker's counters: new connections until each worker has answered."""
    rows: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds
    while len(rows) < WORKERS and time.monotonic() < deadline:
        with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
            row = _get_json(port, "/bench/stats", 2)
            rows[row["pid"]] = row
    return rows


def _tiers(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> dict[str, Any]:
    sums = {"l1_hits": 0, "l2_hits": 0, "misses": 0}
    for pid, row in after.items():
        base = before.get(pid, {})
        for k in sums:
            sums[k] += row.get(k, 0) - base.get(k, 0)
    lookups = sum(sums.values())
    out: dict[str, Any] = {"lookups": lookups, "workers_seen": len(after),
                           "complete": set(before) == set(after) and len(after) == WORKERS}
    out["l2_reads"] = sums["l2_hits"] + sums["misses"]
    for k in ("reconnects", "listener_waits", "lock_waits", "invalidations_received",
              "l1_updates"):
        if any(k in row for row in after.values()):  # fleetcache's own counters
            out[k] = sum(row.get(k, 0) - before.get(pid, {}).get(k, 0)
                         for pid, row in after.items())
    for k, v in sums.items():
        out[k.replace("_hits", "") + "_rate" if k != "misses" else "miss_rate"] = (
            v / lookups if lookups else None)
    return out


# -- load -------------------------------------------------------------------------------------


def load(port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """Closed-loop load at ``concurrency`` for ``seconds``: wrk if present, else Python."""
    env = dict(os.environ, BENCH_KEYS=str(KEYS), BENCH_ZIPF_S=str(ZIPF_S),
               BENCH_WRITE_SHARE=str(WRITE_SHARE))
    if shutil.which("wrk"):
        cmd = ["wrk", "-t", "2", "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "10s",
               "-s", str(APPS / "zipf.lua"), f"http://127.0.0.1:{port}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=seconds + 60, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("BENCHJSON "):
                res = json.loads(line.removeprefix("BENCHJSON "))
                res["tool"] = "wrk"
                return res
        raise RuntimeError(f"wrk printed no summary: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    procs = 2
    kids = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleet", "--loadgen", str(port), str(seconds),
         str(concurrency // procs), str(i)], cwd=h.ROOT, env=env, stdout=subprocess.PIPE,
        text=True) for i in range(procs)]
    parts = [json.loads(k.communicate(timeout=seconds + 60)[0]) for k in kids]
    lat = sorted(x for p in parts for x in p["lat_us"])
    return {"tool": "python", "requests": sum(p["requests"] for p in parts),
            "duration_us": max(p["duration_us"] for p in parts),
            "writes": sum(p["writes"] for p in parts),
            "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0,
                       "status": sum(p["errors"] for p in parts)},
            "latency_us": {k: v for k, v in h.pcts(lat).items() if k != "n"}}


def loadgen(port: int, seconds: float, threads: int, seed: int) -> None:
    """The Python fallback of wrk: keep-alive connections, zipf keys, 2% POSTs."""
    cum = list(itertools.accumulate(1.0 / (r ** ZIPF_S) for r in range(1, KEYS + 1)))
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    lat: list[float] = []
    totals = {"requests": 0, "writes": 0, "errors": 0}

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        done = writes = errors = 0
        while time.monotonic() < stop:
            key = bisect.bisect_left(cum, rng.random() * cum[-1]) + 1
            post = rng.random() < WRITE_SHARE
            t0 = time.perf_counter()
            try:
                conn.request("POST" if post else "GET", f"/item/{key}",
                             body=b"" if post else None)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                ok = False
            mine.append((time.perf_counter() - t0) * 1e6)
            done += 1
            writes += post
            errors += not ok
        with lock:
            lat.extend(mine)
            totals["requests"] += done
            totals["writes"] += writes
            totals["errors"] += errors

    started = time.monotonic()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps({**totals, "lat_us": lat,
                      "duration_us": int((time.monotonic() - started) * 1e6)}))


# -- stale reads ------------------------------------------------------------------------------


def _read_dumps(out: str) -> tuple[list[dict[str, Any]], int]:
    docs = []
    for path in sorted(Path(out).glob("*.json")):
        docs.append(json.loads(path.read_text()))
    return docs, len(docs)


def stale_reads(docs: list[dict[str, Any]], t0: float, t1: float,
                cache_writes: bool) -> dict[str, Any]:
    """Reads started in [t0, t1] that returned a version older than the DB's at their start.

    Each stale read gets one cause:

    * ``in_flight``: the newer version was committed but its write request had not finished
      updating the cache when the read started (set-after-commit has that window).
    * ``write_order``: the read returned what the app's own writes may have left in the
      cache: two requests wrote the same key and the older version's ``cache.set`` may
      have run last in Redis (its worker was descheduled between its DB commit and its
      cache update). The order in Redis is not observed, only each update's window (from
      its commit, which comes right before the call, to the call's return): v may have
      been the last write applied unless some write's window opened after v's closed. An
      application race (set-after-commit with no version check) that any cache written
      this way shows; not an invalidation delay.
    * ``lag``: anything else: the cache served v after a write that certainly ran after
      v's (its window opened after v's closed) had completed; for caches that are never
      written (dict, none), a version older than the DB's. Its age runs from the first
      such completed update (or the commit); only these count against the invalidation
      bound.
    """
    history: dict[int, list[tuple[float, int, float]]] = {}
    for doc in docs:
        keys, versions, committed, cached = doc["writes"]
        for k, v, tc, tw in zip(keys, versions, committed, cached, strict=True):
            history.setdefault(k, []).append((tc, v, tw))
    by_commit: dict[int, tuple[list[float], list[int]]] = {}
    updating: dict[int, dict[int, tuple[float, float]]] = {}
    for k, rows in history.items():
        rows.sort()
        running, best = 1, []
        for _, v, _ in rows:
            running = max(running, v)
            best.append(running)
        by_commit[k] = ([tc for tc, _, _ in rows], best)
        updating[k] = {v: (tc, tw) for tc, v, tw in rows}
    reads = stale = order = flight = beyond = beyond_doc = 0
    ages: list[float] = []
    for doc in docs:
        keys, versions, starts = doc["reads"]
        for k, v, t in zip(keys, versions, starts, strict=True):
            if not t0 <= t <= t1:
                continue
            reads += 1
            if k not in by_commit:
                continue
            commits, best = by_commit[k]
            i = bisect.bisect_right(commits, t)  # writes committed before the read started
            if i == 0 or v >= best[i - 1]:
                continue
            stale += 1
            if cache_writes:
                if not any(ver > v and tw <= t for _, ver, tw in history[k]):
                    flight += 1  # nothing newer had reached the cache yet
                    continue
                own = updating[k].get(v)  # None: the initial version, no update of its own
                if own is not None and own[0] <= t < own[1]:
                    order += 1  # v's own update is landing
                    continue
                after = [tw for tc, ver, tw in history[k]
                         if ver != v and tw <= t and (own is None or tc > own[1])]
                if not after:
                    order += 1  # v may have been the last update Redis applied
                    continue
                since = min(after)
            else:
                since = commits[next(n for n in range(i) if best[n] > v)]
            age = t - since
            ages.append(age * 1000)
            if age > STALE_BOUND_S:
                beyond += 1
            if age > DOCUMENTED_BOUND_S:
                beyond_doc += 1
    return {"reads": reads, "stale": stale, "in_flight": flight, "write_order": order,
            "lag": stale - order - flight,
            "stale_beyond_bound": beyond, "stale_beyond_documented": beyond_doc,
            "lag_age_ms": h.pcts(ages)}


def db_stale_loads(docs: list[dict[str, Any]]) -> int:
    """DB reads that returned less than was committed before they started: must be 0 (a
    check of the harness itself: a stale database would make every cache look stale)."""
    commits: dict[int, list[tuple[float, int]]] = {}
    for doc in docs:
        keys, versions, committed, _ = doc["writes"]
        for k, v, tc in zip(keys, versions, committed, strict=True):
            commits.setdefault(k, []).append((tc, v))
    bad = 0
    for doc in docs:
        for k, v, t in zip(*doc.get("loads", [[], [], []]), strict=True):
            if any(tc <= t and cv > v for tc, cv in commits.get(k, ())):
                bad += 1
    return bad


# -- the benchmark ----------------------------------------------------------------------------


class CPUClock:
    """CPU seconds (user + system) used so far by the gunicorn workers, the Redis server
    (``INFO cpu``) and this process's finished children (the load generator: it is waited
    for before the second reading)."""

    def __init__(self, master_pid: int, url: str) -> None:
        import psutil
        import redis

        self._workers = psutil.Process(master_pid).children()
        self._redis = redis.Redis.from_url(url)

    def read(self) -> dict[str, float]:
        workers = 0.0
        for p in self._workers:
            with contextlib.suppress(Exception):  # a worker gone: its CPU is lost
                t = p.cpu_times()
                workers += t.user + t.system
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"workers": workers, "redis": h.server_cpu(self._redis),
                "load": kids.ru_utime + kids.ru_stime}

    def close(self) -> None:
        self._redis.close()


def run_variant(variant: str, worker_class: str, url: str, tmp: str, *, warm_s: float,
                seconds: float) -> dict[str, Any]:
    with gunicorn(variant, worker_class, url, tmp) as (port, out, master):
        load(port, warm_s, CONCURRENCY)
        before = snapshot(port)
        cpu = CPUClock(master, url)
        cpu0 = cpu.read()
        t0 = time.monotonic()
        res = load(port, seconds, CONCURRENCY)
        t1 = time.monotonic()
        cpu1 = cpu.read()
        cpu.close()
        after = snapshot(port)
    docs, dumped = _read_dumps(out)
    rps = res["requests"] / (res["duration_us"] / 1e6)
    cpu_us = {k: (cpu1[k] - cpu0[k]) / max(1, res["requests"]) * 1e6 for k in cpu0}
    errors = sum(res["errors"].values())
    stale = stale_reads(docs, t0, t1, cache_writes=variant not in {"none", "dict"})
    gunicorn_errors = ""
    err_file = Path(out) / "gunicorn-stderr.txt"
    if err_file.exists():
        gunicorn_errors = err_file.read_text()[-2000:]
    return {"rps": rps, "requests": res["requests"], "writes": res["writes"],
            "cpu_us_per_request": cpu_us,
            "errors": errors, "errors_by_kind": res["errors"],
            "latency_ms": {k: v / 1000 for k, v in res["latency_us"].items()},
            "tiers": _tiers(before, after), "stale": stale, "workers_dumped": dumped,
            "db_stale_loads": db_stale_loads(docs),
            "load_tool": res["tool"], "gunicorn_stderr_tail": gunicorn_errors}


def measure(opts: h.Options, url: str, server: h.Server,
            classes: tuple[str, ...]) -> dict[str, Any]:
    warm_s = opts.pick(1, 5)
    seconds = opts.pick(2, 10)
    rounds: dict[str, list[dict[str, Any]]] = {wc: [] for wc in classes}
    tmp = tempfile.mkdtemp(prefix="fleetcache-bench-fleet-")
    try:
        for r in range(opts.rounds):
            for wc in classes:
                rd = {}
                order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
                for variant in order:
                    server.client().flushall()
                    rd[variant] = run_variant(variant, wc, url, tmp, warm_s=warm_s,
                                               seconds=seconds)
                    print(f"  fleet {wc} round {r + 1}: {LABELS[variant]}: "
                          f"{rd[variant]['rps']:.0f} req/s", flush=True)
                rounds[wc].append(rd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rounds": rounds, "warm_s": warm_s, "seconds": seconds}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for wc, rounds in raw["rounds"].items():
        figures[wc] = {}
        for v in VARIANTS:
            rs = [rd[v] for rd in rounds]
            figures[wc][v] = {
                "rps": h.median(r["rps"] for r in rs),
                "latency_ms": h.median_rounds([r["latency_ms"] for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
                "l1_rate": h.median(r["tiers"]["l1_rate"] for r in rs
                                    if r["tiers"]["l1_rate"] is not None),
                "l2_rate": h.median(r["tiers"]["l2_rate"] for r in rs
                                    if r["tiers"]["l2_rate"] is not None),
                "miss_rate": h.median(r["tiers"]["miss_rate"] for r in rs
                                      if r["tiers"]["miss_rate"] is not None),
                "tiers_complete": all(r["tiers"]["complete"] for r in rs),
                "stale": sum(r["stale"]["stale"] for r in rs),
                "stale_write_order": sum(r["stale"]["write_order"] for r in rs),
                "stale_in_flight": sum(r["stale"]["in_flight"] for r in rs),
                "stale_lag": sum(r["stale"]["lag"] for r in rs),
                "stale_beyond_bound": sum(r["stale"]["stale_beyond_bound"] for r in rs),
                "stale_beyond_documented": sum(r["stale"]["stale_beyond_documented"]
                                               for r in rs),
                "reads_checked": sum(r["stale"]["reads"] for r in rs),
                "l2_reads_per_write": h.median(r["tiers"]["l2_reads"] / max(1, r["writes"])
                                               for r in rs),
                "l1_updates": sum(r["tiers"].get("l1_updates", 0) for r in rs),
                "cpu_us_per_request": {k: h.median(r["cpu_us_per_request"][k] for r in rs)
                                       for k in rs[0]["cpu_us_per_request"]},
            }
        fc = figures[wc]["fleetcache"]

        def per_round(a: str, b: str, key: str, rounds: list[dict[str, Any]] = rounds) -> float:
            return h.median((rd[a]["latency_ms"][key] if key != "rps" else rd[a]["rps"])
                            / max(1e-9, rd[b]["latency_ms"][key] if key != "rps"
                                  else rd[b]["rps"]) for rd in rounds)

        fc["rps_ratio_to_dict"] = per_round("fleetcache", "dict", "rps")
        fc["rps_ratio_to_flask_caching"] = per_round("fleetcache", "flask-caching", "rps")
        fc["p99_ratio_to_flask_caching"] = per_round("fleetcache", "flask-caching", "p99")
        up = figures[wc]["fleetcache-update"]
        up["rps_ratio_to_invalidate"] = per_round("fleetcache-update", "fleetcache", "rps")
        up["p99_ratio_to_invalidate"] = per_round("fleetcache-update", "fleetcache", "p99")
        for v in VARIANTS:
            figures[wc][v]["rps_ratio_to_dict"] = per_round(v, "dict", "rps")
    return figures


def tables(figures: dict[str, Any], raw: dict[str, Any]) -> list[h.Table]:
    out = []
    for wc, variants in figures.items():
        unit = (f"{THREADS} threads each" if wc == "gthread" else "greenlets")
        t = h.Table(f"Fleet: gunicorn {WORKERS} {wc} workers ({unit}), {CONCURRENCY} "
                    f"connections, {KEYS:,} zipf({ZIPF_S}) keys, {WRITE_SHARE:.0%} writes, "
                    f"{DB_MS} ms DB",
                    ["variant", "req/s", "x dict", "p50 ms", "p90 ms", "p99 ms", "max ms",
                     "errors", "L1 hit", "L2 hit", "miss", "L2 reads/write",
                     "CPU us/req: workers", "Redis", "load gen", "stale",
                     "in flight", "write order",
                     "lag",
                     f"lag >{STALE_BOUND_S * 1000:.0f}ms", f"lag >{DOCUMENTED_BOUND_S:g}s"],
                    note=(f"warm-up {raw['warm_s']} s, then {raw['seconds']} s measured per "
                          "round; median of rounds (errors and stale reads summed). stale = "
                          "returned version older than the DB's at request start; in flight = "
                          "the newer version's write had not finished its cache update yet; "
                          "write order = the value may be the last one Redis applied (two "
                          "writers' cache updates overlapped after their commits: an app "
                          "race, see fleet.stale_reads); lag = older than a write that "
                          "certainly ran after it and had finished; its age counts from that "
                          "write. The dict memo is never invalidated: its lag is by design. "
                          "CPU us/req: user + system CPU of the workers, the Redis server and "
                          "the load generator over the measured window, per request."))
        for v, fig in variants.items():
            lat = fig["latency_ms"]

            def pct(x: float) -> str:
                return "-" if math.isnan(x) else f"{x:.1%}"  # NaN: no such tier

            t.add(LABELS[v], fig["rps"], h.fmt_ratio(fig["rps_ratio_to_dict"]), lat["p50"],
                  lat["p90"], lat["p99"], lat["max"], fig["errors"], pct(fig["l1_rate"]),
                  pct(fig["l2_rate"]), pct(fig["miss_rate"]),
                  f"{fig['l2_reads_per_write']:.1f}",
                  *(f"{fig['cpu_us_per_request'][k]:.0f}" for k in ("workers", "redis", "load")),
                  fig["stale"],
                  fig["stale_in_flight"], fig["stale_write_order"], fig["stale_lag"],
                  fig["stale_beyond_bound"], fig["stale_beyond_documented"])
        out.append(t)
    return out


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for wc, variants in figures.items():
        fc, fl = variants["fleetcache"], variants["flask-caching"]
        out += [
            h.goal(f"{wc}: RPS >= 0.9x the dict ceiling", fc["rps_ratio_to_dict"], ">= 0.9",
                   fc["rps_ratio_to_dict"] >= 0.9,
                   "every key in L1: "
                   f"{variants['fleetcache-10k']['rps_ratio_to_dict']:.2f}x"),
            h.goal(f"{wc}: RPS >= 1.4x Flask-Caching", fc["rps_ratio_to_flask_caching"],
                   ">= 1.4", fc["rps_ratio_to_flask_caching"] >= 1.4),
            h.goal(f"{wc}: p99 no worse than Flask-Caching's", fc["latency_ms"]["p99"],
                   f"<= {fl['latency_ms']['p99']:.2f} ms",
                   fc["latency_ms"]["p99"] <= fl["latency_ms"]["p99"],
                   f"per-round ratio {fc['p99_ratio_to_flask_caching']:.2f}x"),
            h.goal(f"{wc}: zero stale reads beyond the {STALE_BOUND_S * 1000:.0f} ms "
                   "invalidation bound", fc["stale_beyond_bound"], "0",
                   fc["stale_beyond_bound"] == 0,
                   f"{fc['stale_lag'] - fc['stale_beyond_bound']} within it; "
                   f"{fc['stale_in_flight']} in a write's own window, "
                   f"{fc['stale_write_order']} from the app's write-order race "
                   f"(Flask-Caching: {fl['stale_in_flight']} and {fl['stale_write_order']}); "
                   f"{fc['reads_checked']} reads checked"),
            h.goal(f"{wc}: zero errors", fc["errors"], "0", fc["errors"] == 0),
        ]
        up = variants["fleetcache-update"]
        out += [
            h.goal(f'{wc}: sync_strategy="update": zero stale reads beyond the bound and '
                   "zero errors", up["stale_beyond_bound"] + up["errors"], "0",
                   up["stale_beyond_bound"] + up["errors"] == 0,
                   f"{up['l1_updates']} L1 entries replaced in place"),
            h.goal(f'{wc}: sync_strategy="update" vs "invalidate": RPS ratio (choosing the '
                   "default)", up["rps_ratio_to_invalidate"], "informative", None,
                   f"L2 reads per write {up['l2_reads_per_write']:.1f} vs "
                   f"{fc['l2_reads_per_write']:.1f}; p99 ratio "
                   f"{up['p99_ratio_to_invalidate']:.2f}x"),
        ]
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    classes = list(figures)
    cats = [LABELS[v] for v in VARIANTS]
    return {"title": f"Fleet: gunicorn x {WORKERS} workers, zipf keys, {DB_MS} ms DB", "panels": [
        {"title": "requests per second (median of rounds)", "unit": "req/s", "log": False,
         "categories": cats,
         "series": [{"label": wc, "values": [figures[wc][v]["rps"] for v in VARIANTS]}
                    for wc in classes]},
        {"title": "latency ms (bar p50, whisker p99)", "unit": "ms", "log": True,
         "categories": cats,
         "series": [{"label": wc,
                     "values": [figures[wc][v]["latency_ms"]["p50"] for v in VARIANTS],
                     "upper": [figures[wc][v]["latency_ms"]["p99"] for v in VARIANTS]}
                    for wc in classes]},
    ]}


def run(opts: h.Options, classes: tuple[str, ...] = WORKER_CLASSES) -> dict[str, Any]:
    raw, version, started = h.on_server(
        lambda server: measure(opts, server.url, server, classes))
    figures = summarize(raw)
    params = {"workers": WORKERS, "threads": THREADS, "keys": KEYS,
              "zipf_s": ZIPF_S, "write_share": WRITE_SHARE,
              "concurrency": CONCURRENCY, "db_ms": DB_MS,
              "stale_bound_s": STALE_BOUND_S,
              "documented_bound_s": DOCUMENTED_BOUND_S, "warm_s": raw["warm_s"],
              "seconds": raw["seconds"], "worker_classes": list(classes),
              "load_tool": "wrk" if shutil.which("wrk") else "python"}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=raw["rounds"], tables=tables(figures, raw),
                    goals=goals(figures), chart=chart(figures))


def main() -> None:
    parser = h.parser("python -m benchmarks.fleet")
    parser.add_argument("--worker-class", choices=WORKER_CLASSES, action="append")
    parser.add_argument("--loadgen", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        port, seconds, threads, seed = args.loadgen
        loadgen(int(port), float(seconds), int(threads), int(seed))
        return
    run(h.options(args, ROUNDS),
        tuple(args.worker_class) if args.worker_class else WORKER_CLASSES)


if __name__ == "__main__":
    main()
