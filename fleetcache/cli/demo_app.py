"""The demo app: a small real Flask app on fleetcache, a slow "database" behind get_or_compute.

``fleetcache demo`` runs it under gunicorn; so do the fleet tests and deploy/'s Dockerfile
(``gunicorn -c deploy/gunicorn.conf.py fleetcache.cli.demo_app:app``).

Endpoints:
  GET  /product/<id>       the product, cached (fleetcache L1 -> L2 -> database)
  POST /product/<id>       bump the product's version in the database, then cache.set it
  GET  /burst/<key>?ms=200 a cold key with a slow compute (stampede demo)
  GET  /watch/<id>?version=N&timeout=2
                           wait (in this worker) until the cached product reaches version N;
                           reports when it was seen, to measure cross-worker invalidation
  POST /events             publish the JSON body's str fields to the "events" stream
  GET  /events             the newest 10 events
  GET  /stats              this worker's cache stats
  GET  /metrics            the whole fleet's Prometheus metrics (every worker, every host)
  GET  /health             Redis round trip, bus state

The "database" is SQLite in a file shared by all workers (``FLEETCACHE_DEMO_DB``), with
``FLEETCACHE_DEMO_DB_MS`` milliseconds of simulated latency per read (default 5).
``FLEETCACHE_STATS_INTERVAL`` sets how often each worker reports to the fleet view
(default 5 s).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from typing import Any

from flask import Flask, jsonify, request

from fleetcache import CacheStrategy, FleetCache
from fleetcache.flask import register_metrics

DB_PATH = os.environ.get("FLEETCACHE_DEMO_DB") or os.path.join(
    tempfile.gettempdir(), "fleetcache-demo.sqlite3"
)
DB_LATENCY = float(os.environ.get("FLEETCACHE_DEMO_DB_MS", "5")) / 1000

# Module level, before fork under --preload: fleetcache resets it in every worker.
cache = FleetCache(namespace=os.environ.get("FLEETCACHE_NAMESPACE", "demo"),
                   stats_interval=float(os.environ.get("FLEETCACHE_STATS_INTERVAL", "5")))
app = Flask(__name__)
register_metrics(app, "/metrics", cache)
_local = threading.local()


def _db() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB_PATH, timeout=10, isolation_level=None)
        # Switching a fresh file to WAL fails at once with "database is locked" when several
        # workers open it together (the busy timeout does not apply): retry briefly.
        deadline = time.monotonic() + 10
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS product (id INTEGER PRIMARY KEY, "
                             "version INTEGER NOT NULL)")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        _local.conn = conn
    return conn


def load_product(product_id: int) -> dict[str, Any]:
    """The slow database read that the cache exists to avoid."""
    time.sleep(DB_LATENCY)
    row = _db().execute("SELECT version FROM product WHERE id = ?", (product_id,)).fetchone()
    version = row[0] if row else 0
    return {"id": product_id, "name": f"Product {product_id}", "version": version}


@app.get("/product/<int:product_id>")
def get_product(product_id: int) -> Any:
    product = cache.get_or_compute(f"product:{product_id}", lambda: load_product(product_id),
                                   strategy=CacheStrategy.MEDIUM_TERM)
    return jsonify(product=product, pid=os.getpid())


@app.post("/product/<int:product_id>")
def update_product(product_id: int) -> Any:
    db = _db()
    db.execute("INSERT INTO product (id, version) VALUES (?, 1) "
               "ON CONFLICT(id) DO UPDATE SET version = version + 1", (product_id,))
    version = db.execute("SELECT version FROM product WHERE id = ?", (product_id,)).fetchone()[0]
    product = {"id": product_id, "name": f"Product {product_id}", "version": version}
    cache.set(f"product:{product_id}", product, strategy=CacheStrategy.MEDIUM_TERM)
    return jsonify(product=product, pid=os.getpid(), written_at=time.time())


@app.get("/watch/<int:product_id>")
def watch_product(product_id: int) -> Any:
    started_at = time.time()
    want = int(request.args.get("version", "1"))
    deadline = time.monotonic() + float(request.args.get("timeout", "2"))
    key = f"product:{product_id}"
    while time.monotonic() < deadline:
        product = cache.get_or_compute(key, lambda: load_product(product_id))
        if product["version"] >= want:
            return jsonify(seen=True, seen_at=time.time(), started_at=started_at,
                           pid=os.getpid())
        time.sleep(0.0005)  # yields to the listener (a greenlet under gevent)
    return jsonify(seen=False, started_at=started_at, pid=os.getpid())


@app.get("/burst/<key>")
def burst(key: str) -> Any:
    delay = int(request.args.get("ms", "200")) / 1000
    computed: list[bool] = []

    def compute() -> dict[str, Any]:
        computed.append(True)
        time.sleep(delay)
        return {"key": key, "computed_by": os.getpid()}

    value = cache.get_or_compute(f"burst:{key}", compute, strategy=CacheStrategy.REAL_TIME)
    return jsonify(value=value, computed=bool(computed), pid=os.getpid())


@app.post("/events")
def publish_event() -> Any:
    body = request.get_json(force=True) or {}
    fields = {str(k): str(v) for k, v in body.items()} or {"event_type": "ping"}
    return jsonify(id=cache.publish_to_stream("events", fields))


@app.get("/events")
def latest_events() -> Any:
    return jsonify(events=cache.read_stream_latest("events", 10))


@app.get("/stats")
def stats() -> Any:
    s = cache.stats()
    return jsonify(pid=os.getpid(), hit_rate=s.hit_rate,
                   **{name: getattr(s, name) for name in s.__dataclass_fields__})


@app.get("/health")
def health() -> Any:
    h = cache.health()
    return jsonify(ok=h.ok, redis_ok=h.redis_ok, redis_latency_ms=h.redis_latency_ms,
                   bus_connected=h.bus_connected, l1_size=h.l1_size, pid=h.pid, error=h.error)
