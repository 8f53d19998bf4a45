"""The fleet benchmark's Flask app: one endpoint over a versioned database, four caches.

``BENCH_CACHE`` picks the variant (read when the module is imported, i.e. in the gunicorn
master under ``preload_app``):

* ``fleetcache``: default settings, ``get_or_compute`` on reads; writes ``set`` the new
  value (fleet-wide invalidation of every other worker's L1); ``fleetcache-update`` and
  ``fleetcache-10k`` change one setting each (``sync_strategy="update"``; an
  ``l1_capacity`` that holds every key);
* ``flask-caching``: Flask-Caching's ``RedisCache``, cache-aside (``get``; on a miss load and
  ``set``); writes ``set`` the new value;
* ``none``: every read goes to the database;
* ``dict``: a per-process dict memo that is never invalidated (the ceiling: no network, no
  consistency).

The "database" is SQLite in a file shared by every worker (``BENCH_DB``), table
``item(id, version)``, with ``BENCH_DB_MS`` (5) ms of simulated latency per call (a sleep:
cooperative under gevent). A write bumps the version; a read returns it. Every read logs
``(key, version returned, monotonic start)`` and every write ``(key, new version, monotonic
commit, monotonic end of its cache update)``; the worker dumps them to ``BENCH_OUT`` when it
exits (the ``worker_exit`` hook in gunicorn_conf.py), and the benchmark finds stale reads
offline (DB loads are logged too: the harness checks that the DB itself is never stale).
CLOCK_MONOTONIC is system-wide on Linux, so the workers' times compare.

Endpoints: ``GET /item/<id>``, ``POST /item/<id>``, ``GET /bench/stats``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from array import array
from typing import Any

import msgspec
from flask import Flask, Response

VARIANT = os.environ.get("BENCH_CACHE", "fleetcache")
DB_PATH = os.environ.get("BENCH_DB", "")
DB_SECONDS = float(os.environ.get("BENCH_DB_MS", "5")) / 1000
OUT_DIR = os.environ.get("BENCH_OUT", "")
NAMESPACE = os.environ.get("BENCH_NS", "fleet")
REDIS_URL = os.environ.get("FLEETCACHE_REDIS_URL", "")
# Settings on top of fleetcache's defaults, for experiments (JSON: {"max_listener_lag": 1}).
OPTIONS = json.loads(os.environ.get("BENCH_FLEETCACHE_OPTIONS", "{}"))
TTL = 3600
VARIANTS = ("fleetcache", "fleetcache-update", "fleetcache-10k", "flask-caching", "none",
            "dict")
FLEET = VARIANT.startswith("fleetcache")
# Each fleetcache variant is the defaults but one setting: the sync strategy, or an L1 that
# holds every key (what the default capacity's eviction costs against the dict, which
# holds every key too).
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    "fleetcache": {}, "fleetcache-update": {"sync_strategy": "update"},
    "fleetcache-10k": {"l1_capacity": 10_000}}

app = Flask(__name__)
_json = msgspec.json.Encoder().encode

if FLEET:
    from fleetcache import FleetCache

    # Module level, before fork (preload): fleetcache resets it in every worker, and the
    # fleetcache.gunicorn hooks connect it in post_fork / post_worker_init.
    cache = FleetCache.from_url(REDIS_URL, namespace=NAMESPACE,
                                **{**VARIANT_OPTIONS[VARIANT], **OPTIONS})
elif VARIANT == "flask-caching":
    from flask_caching import Cache

    fc = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": REDIS_URL,
                            "CACHE_KEY_PREFIX": f"{NAMESPACE}:", "CACHE_DEFAULT_TIMEOUT": TTL})
elif VARIANT not in VARIANTS:
    raise SystemExit(f"BENCH_CACHE must be one of {VARIANTS}, got {VARIANT!r}")

memo: dict[int, dict[str, Any]] = {}


class _Process:
    """Per-process state, made after fork on first use (nothing shared with the master)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.db = sqlite3.connect(DB_PATH, timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 30000")
        # One connection per process; SQL calls are microseconds and never yield, so a lock
        # (a gevent lock once patched) around them costs nothing. The 5 ms sleep is outside.
        self.db_lock = threading.Lock()
        # One record is appended to several arrays: a thread switch between two appends
        # would pair one request's key with another's version (a phantom stale read).
        self.log_lock = threading.Lock()
        self.counts = {"l1_hits": 0, "l2_hits": 0, "misses": 0}
        self.read_key, self.read_version, self.read_start = array("i"), array("i"), array("d")
        self.write_key, self.write_version, self.write_at = array("i"), array("i"), array("d")
        self.write_cached = array("d")
        self.load_key, self.load_version, self.load_start = array("i"), array("i"), array("d")


_proc: _Process | None = None
_proc_lock = threading.Lock()


def _state() -> _Process:
    global _proc
    proc = _proc
    if proc is None or proc.pid != os.getpid():
        with _proc_lock:
            if _proc is None or _proc.pid != os.getpid():
                _proc = _Process()
            proc = _proc
    return proc


def load(item_id: int) -> dict[str, Any]:
    """The slow database read the cache exists to avoid (logged: the harness checks itself)."""
    start = time.monotonic()
    time.sleep(DB_SECONDS)
    proc = _state()
    with proc.db_lock:
        rows = proc.db.execute("SELECT version FROM item WHERE id = ?", (item_id,)).fetchall()
    version = rows[0][0] if rows else 0
    with proc.log_lock:
        proc.load_key.append(item_id)
        proc.load_version.append(version)
        proc.load_start.append(start)
    return {"id": item_id, "version": version, "name": f"Item {item_id}", "body": "x" * 120}


def _respond(item: dict[str, Any]) -> Response:
    return Response(_json(item), mimetype="application/json")


@app.get("/item/<int:item_id>")
def read(item_id: int) -> Response:
    start = time.monotonic()
    proc = _state()
    if FLEET:
        item = cache.get_or_compute(f"item:{item_id}", lambda: load(item_id), ttl=TTL)
    elif VARIANT == "flask-caching":
        key = f"item:{item_id}"
        item = fc.get(key)
        if item is None:
            proc.counts["misses"] += 1
            item = load(item_id)
            fc.set(key, item, timeout=TTL)
        else:
            proc.counts["l2_hits"] += 1
    elif VARIANT == "dict":
        item = memo.get(item_id)
        if item is None:
            proc.counts["misses"] += 1
            item = memo[item_id] = load(item_id)
        else:
            proc.counts["l1_hits"] += 1
    else:
        proc.counts["misses"] += 1
        item = load(item_id)
    with proc.log_lock:
        proc.read_key.append(item_id)
        proc.read_version.append(item["version"])
        proc.read_start.append(start)
    return _respond(item)


@app.post("/item/<int:item_id>")
def write(item_id: int) -> Response:
    time.sleep(DB_SECONDS)
    proc = _state()
    with proc.db_lock:
        # fetchall: the UPDATE ... RETURNING must run to completion to commit (autocommit).
        version = proc.db.execute("UPDATE item SET version = version + 1 WHERE id = ? "
                                  "RETURNING version", (item_id,)).fetchall()[0][0]
    committed = time.monotonic()
    item = {"id": item_id, "version": version, "name": f"Item {item_id}", "body": "x" * 120}
    if FLEET:
        cache.set(f"item:{item_id}", item, ttl=TTL)
    elif VARIANT == "flask-caching":
        fc.set(f"item:{item_id}", item, timeout=TTL)
    # "dict" is never invalidated (the ceiling); "none" has nothing to invalidate.
    cached = time.monotonic()
    with proc.log_lock:
        proc.write_key.append(item_id)
        proc.write_version.append(version)
        proc.write_at.append(committed)
        proc.write_cached.append(cached)
    return _respond(item)


def _counts(proc: _Process) -> dict[str, int]:
    if FLEET:
        s = cache.stats()
        return {"l1_hits": s.l1_hits, "l2_hits": s.l2_hits, "misses": s.misses,
                "computes": s.computes, "lock_waits": s.lock_waits, "promotions": s.promotions,
                "listener_waits": s.listener_waits,
                "invalidations_received": s.invalidations_received,
                "redis_errors": s.redis_errors, "reconnects": s.reconnects,
                "l1_updates": s.l1_updates}
    return dict(proc.counts)


@app.get("/bench/stats")
def stats() -> Response:
    proc = _state()
    return _respond({"pid": proc.pid, "variant": VARIANT, **_counts(proc)})


def dump() -> None:
    """Write this worker's logs to BENCH_OUT (called from the worker_exit hook)."""
    proc = _proc
    if not OUT_DIR or proc is None or proc.pid != os.getpid():
        return
    doc = {"pid": proc.pid, "variant": VARIANT, "counts": _counts(proc),
           "reads": [proc.read_key.tolist(), proc.read_version.tolist(),
                     proc.read_start.tolist()],
           "writes": [proc.write_key.tolist(), proc.write_version.tolist(),
                      proc.write_at.tolist(), proc.write_cached.tolist()],
           "loads": [proc.load_key.tolist(), proc.load_version.tolist(),
                     proc.load_start.tolist()]}
    path = os.path.join(OUT_DIR, f"{VARIANT}-{proc.pid}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)
