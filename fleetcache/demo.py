"""``fleetcache demo``: a small fleet of forked workers sharing one cache, with a report.

With no Redis URL configured it starts an embedded server (see :mod:`fleetcache.embedded`).
The cache is created before fork, as under gunicorn ``--preload``, so the demo also shows
that every worker gets its own connections and listener.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import multiprocessing as mp
import os
import random
import sys
import threading
import time
from typing import Any

from .cache import FleetCache
from .config import CacheConfig
from .embedded import EmbeddedServer

_KEYS = 500
_DB_LATENCY = 0.005
_BURST_COMPUTE = 0.2
_PROBES = 20


def _zipf_sampler(n: int, s: float = 1.1) -> Any:
    cum = list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, n + 1)))
    total = cum[-1]
    return lambda rng: bisect.bisect_left(cum, rng.random() * total)


def _worker(index: int, cache: FleetCache, args: argparse.Namespace, barrier: Any,
            results: Any) -> None:
    rng = random.Random(index)
    sample = _zipf_sampler(_KEYS)
    cache.connect(wait=5.0)
    requests = errors = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        key = f"product:{sample(rng)}"
        try:
            if rng.random() < 0.02:
                cache.set(key, {"id": key, "updated_by": index, "at": time.time()})
            else:
                cache.get_or_compute(key, functools.partial(_load, key))
            requests += 1
        except Exception:
            errors += 1
    load_stats = cache.stats()

    # Stampede burst: every thread of every worker asks one cold key at the same moment.
    barrier.wait()
    threads = [threading.Thread(target=cache.get_or_compute,
                                args=("burst:cold", lambda: _slow({"burst": True})))
               for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    burst_computes = cache.stats().computes - load_stats.computes

    # Invalidation delay: worker 0 writes a timestamp; the others hold the key in L1 and
    # measure how long until they see the new value.
    delays: list[float] = []
    for probe in range(_PROBES):
        barrier.wait()
        if index == 0:
            cache.set("probe", (probe, 0.0))
        barrier.wait()
        cache.get("probe")  # now in every L1
        barrier.wait()
        if index == 0:
            time.sleep(0.01)
            cache.set("probe", (probe, time.time()))
        else:
            limit = time.monotonic() + 2.0
            while time.monotonic() < limit:
                seen = cache.get("probe")
                if seen and seen[1]:
                    delays.append(time.time() - seen[1])
                    break
                time.sleep(0.0005)  # a request loop does I/O; a busy spin would hog the GIL
    s = cache.stats()
    results.put({"worker": index, "pid": os.getpid(), "requests": requests, "errors": errors,
                 "l1_hits": load_stats.l1_hits, "l2_hits": load_stats.l2_hits,
                 "misses": load_stats.misses, "computes": load_stats.computes,
                 "burst_computes": burst_computes, "delays": delays,
                 "invalidations_received": s.invalidations_received})


def _load(key: str) -> dict[str, Any]:
    time.sleep(_DB_LATENCY)  # the "database"
    return {"id": key, "name": key.title(), "price": len(key) * 3}


def _slow(value: dict[str, Any]) -> dict[str, Any]:
    time.sleep(_BURST_COMPUTE)
    return value


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace) -> int:
    """Boot the fleet, run the phases, print the report; returns an exit code."""
    url = os.environ.get("FLEETCACHE_REDIS_URL") or os.environ.get("REDIS_URL")
    server = None
    if not url or url == "embedded":
        server = EmbeddedServer()
        url = server.start()
        print(f"embedded server: {server.binary} on {server.socket_path}")
    else:
        print(f"server: {CacheConfig(url=url).safe_url}")
    try:
        namespace = f"demo{os.getpid()}"
        cache = FleetCache(CacheConfig(url=url, namespace=namespace))
        cache.set("warmup", True)  # the parent uses it before fork, like --preload
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(args.workers)
        results = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(i, cache, args, barrier, results))
                 for i in range(args.workers)]
        print(f"{args.workers} workers x {args.threads} burst threads, {args.seconds:.0f} s "
              f"of zipf load over {_KEYS} keys (2% writes, {_DB_LATENCY * 1000:.0f} ms db)...")
        for p in procs:
            p.start()
        rows = [results.get(timeout=args.seconds + 120) for _ in procs]
        for p in procs:
            p.join(10)
        cache.clear()
        cache.close()
    finally:
        if server is not None:
            server.stop()
    _report(sorted(rows, key=lambda r: r["worker"]), args)
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{'worker':>6} {'pid':>7} {'requests':>9} {'errors':>6} {'L1 hits':>8} "
          f"{'L2 hits':>8} {'misses':>7} {'computes':>8}")
    for r in rows:
        print(f"{r['worker']:>6} {r['pid']:>7} {r['requests']:>9} {r['errors']:>6} "
              f"{r['l1_hits']:>8} {r['l2_hits']:>8} {r['misses']:>7} {r['computes']:>8}")
    total = {k: sum(r[k] for r in rows) for k in ("requests", "errors", "l1_hits", "l2_hits",
                                                   "misses", "burst_computes")}
    lookups = max(1, total["l1_hits"] + total["l2_hits"] + total["misses"])
    delays = [d * 1000 for r in rows for d in r["delays"]]
    expected = (args.workers - 1) * _PROBES
    print(f"\nrequests {total['requests']} ({total['requests'] / args.seconds:.0f}/s), "
          f"errors {total['errors']}")
    print(f"hit rate: L1 {total['l1_hits'] / lookups:.1%}, L2 {total['l2_hits'] / lookups:.1%},"
          f" miss {total['misses'] / lookups:.1%}")
    print(f"stampede burst: {total['burst_computes']} compute(s) for "
          f"{args.workers * args.threads} concurrent requests of one cold key")
    print(f"cross-worker invalidation delay: p50 {_pct(delays, 0.5):.2f} ms, "
          f"p99 {_pct(delays, 0.99):.2f} ms, max {max(delays, default=float('nan')):.2f} ms "
          f"({len(delays)}/{expected} seen)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fleetcache`` / ``python -m fleetcache``."""
    parser = argparse.ArgumentParser(prog="fleetcache")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a demo fleet on an embedded server")
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--threads", type=int, default=8, help="threads per worker in the burst")
    demo.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
