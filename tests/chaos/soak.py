"""Race soak: forked workers hammer a few hot keys while a proxy breaks their links.

Every worker process owns one FleetCache, connected *through* a :class:`~.proxy.Proxy`, and
loops over a small hot key set: ``get`` mostly, ``set``/``delete`` sometimes (worker 0
only reads: its L1 is never refreshed by writes of its own, so it shows staleness best).
Values are versions: before each write the writer takes the key's next number from a Redis
``INCR`` counter on a separate, direct client. Writers of one key are serialised by a
cross-process lock held from the ``INCR`` until the write returned and was recorded, so
version order is L2 order and the checker below is exact.

Meanwhile the parent injects faults on a fixed cycle: RST every connection; blackhole
every pub/sub connection (new subscriptions too) for longer than the watchdog needs;
add 30 ms to every reply. (No fault that delays *requests*: a request timed out on the
client and executed later would be a late write, outside what fleetcache promises.)

Records: writes ``(key, version, kind, started, completed, ok)`` (``ok`` False: the
write raised ``BackendError``, outcome unknown) and reads ``(key, version or None,
started, ended)``, on ``time.monotonic()`` (system-wide on Linux).

Checker: a read's *staleness* is how long before the read started the first write that
its result contradicts had completed (0 when it contradicts no completed write). A read
returning version ``v`` contradicts every completed write with a higher version; a read
returning nothing contradicts every completed write newer than the newest delete that had
started before the read ended. The README bound is
``max(health_check_interval + health_check_timeout, degraded_l1_ttl)``; a read staler than
that (plus a little scheduling slack on a loaded box) is a failure.

Run it by hand for longer: ``python -m tests.chaos.soak --seconds 30``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis

from fleetcache import BackendError, FleetCache

from ..faults import deafen
from ..servers import Server, binaries
from .proxy import Proxy

CTX = mp.get_context("fork")
monotonic = time.monotonic

P_SET = 0.06  # per op of a writer; the rest minus P_DELETE are gets
P_DELETE = 0.02
PAUSE = 0.0002  # between ops: keeps the record count (and the checker) small
SLACK = 0.25  # scheduling slack on top of the documented bound (2 busy cores)


class Write(NamedTuple):
    key: int
    version: int
    kind: str  # "s" set, "d" delete
    start: float
    end: float
    ok: bool


class Read(NamedTuple):
    key: int
    version: int | None
    start: float
    end: float


# -- the checker ----------------------------------------------------------------------------


def check(writes: Iterable[Write], reads: Iterable[Read], bound: float,
          slack: float = SLACK) -> dict[str, Any]:
    """Classify every read by staleness; see the module docstring."""
    by_key: dict[int, list[Write]] = defaultdict(list)
    for w in writes:
        by_key[w.key].append(w)
    overlaps = 0
    index: dict[int, tuple[list[int], list[Write], dict[int, Write], list[int], list[float]]] = {}
    for key, ws in by_key.items():
        ws.sort(key=lambda w: w.version)
        overlaps += sum(1 for a, b in itertools.pairwise(ws) if b.start < a.end)
        certain = [w for w in ws if w.ok]
        deletes = [w for w in ws if w.kind == "d"]
        index[key] = ([w.version for w in certain], certain,
                      {w.version: w for w in ws if w.kind == "s"},
                      [w.version for w in deletes], [w.start for w in deletes])
    empty: tuple[list[int], list[Write], dict[int, Write], list[int], list[float]] = (
        [], [], {}, [], [])
    total = fresh = within = beyond = beyond_strict = impossible = 0
    stale: list[float] = []
    worst: tuple[float, Read | None] = (0.0, None)
    for r in reads:
        total += 1
        versions, certain, sets, del_versions, del_starts = index.get(r.key, empty)
        if r.version is not None:
            origin = sets.get(r.version)
            if origin is None or origin.start > r.end:
                impossible += 1  # a value nobody wrote (yet)
                continue
            threshold = r.version
        else:
            # The newest delete that had started before the read ended (0: initial absence).
            # Deletes are serialised per key, so their starts grow with their versions.
            i = bisect.bisect_right(del_starts, r.end)
            threshold = del_versions[i - 1] if i else 0
        j = bisect.bisect_right(versions, threshold)  # first completed write it contradicts
        staleness = 0.0
        if j < len(certain) and certain[j].end <= r.start:
            staleness = r.start - certain[j].end
        if staleness <= 0:
            fresh += 1
            continue
        stale.append(staleness)
        if staleness > worst[0]:
            worst = (staleness, r)
        if staleness > bound:
            beyond_strict += 1
        if staleness > bound + slack:
            beyond += 1
        else:
            within += 1
    stale.sort()
    return {
        "reads": total,
        "fresh": fresh,
        "stale_within_bound": within,
        "stale_beyond_bound": beyond,
        "stale_beyond_strict_bound": beyond_strict,
        "impossible_reads": impossible,
        "overlapping_writes": overlaps,
        "worst_staleness": round(worst[0], 4),
        "worst_read": tuple(worst[1]) if worst[1] else None,
        "p99_staleness_of_stale": round(stale[int(0.99 * (len(stale) - 1))], 4) if stale
        else 0.0,
        "pct_fresh": round(100.0 * fresh / total, 3) if total else 0.0,
        "pct_within_bound": round(100.0 * (fresh + within) / total, 3) if total else 0.0,
        "bound": bound,
        "slack": slack,
    }


# -- a worker process -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    """What one worker process is told (inherited at fork)."""

    idx: int
    role: str  # "reader" (gets only) or "writer" (gets, sets, deletes)
    port: Any  # mp.Value: the proxy's port, known only after the fork
    direct_url: str  # the server itself, for the version counters
    ns: str
    keys: int
    seconds: float
    locks: list[Any]  # one mp.Lock per key: serialises writers of a key
    go: Any  # mp.Event: the proxy is up
    barrier: Any  # mp.Barrier: every worker's bus is subscribed
    out: str  # where the worker pickles its records
    sabotage: bool
    seed: int


def _worker(job: _Job) -> None:
    try:
        if not job.go.wait(30):
            raise RuntimeError("never told to go")
        cache = FleetCache.from_url(f"redis://127.0.0.1:{job.port.value}/0", namespace=job.ns)
        if not cache.connect(wait=10.0):
            raise RuntimeError("bus not subscribed within 10 s")
        if job.sabotage:
            # Negative control: a listener that drops every invalidation on the floor.
            deafen(cache)
        raw = redis.Redis.from_url(job.direct_url, socket_timeout=5)
        job.barrier.wait(30)
        records = _work(job, cache, raw)
        records["stats"] = dataclasses.asdict(cache.stats())
        cache.close()
        with open(job.out, "wb") as f:
            pickle.dump(records, f)
    except BaseException:
        with open(job.out + ".err", "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def _work(job: _Job, cache: FleetCache, raw: redis.Redis) -> dict[str, Any]:
    end = monotonic() + job.seconds
    rng = random.Random(job.seed * 1000 + job.idx)
    writes: list[Write] = []
    reads: list[Read] = []
    errors: list[str] = []
    while monotonic() < end:
        k = rng.randrange(job.keys)
        key = f"hot{k}"
        x = rng.random() if job.role == "writer" else 1.0
        if x >= P_SET + P_DELETE:
            start = monotonic()
            try:
                value = cache.get(key)
            except Exception as exc:  # reads must never raise
                errors.append(f"get raised {exc!r}")
                continue
            reads.append(Read(k, value, start, monotonic()))
        elif not job.locks[k].acquire(timeout=10):
            errors.append(f"lock of key {k} not free within 10 s")
        else:
            try:
                version = int(raw.incr(f"{job.ns}-version:{k}"))
                kind = "s" if x < P_SET else "d"
                start = monotonic()
                ok = True
                try:
                    if kind == "s":
                        cache.set(key, version)
                    else:
                        cache.delete(key)
                except BackendError:
                    ok = False  # allowed: outcome unknown, the caller is told
                except Exception as exc:
                    errors.append(f"write raised {exc!r}")
                    ok = False
                writes.append(Write(k, version, kind, start, monotonic(), ok))
            finally:
                job.locks[k].release()
        time.sleep(PAUSE)
    return {"idx": job.idx, "role": job.role, "writes": writes, "reads": reads,
            "errors": errors}


# -- the parent -----------------------------------------------------------------------------


def _inject(proxy: Proxy, until: float) -> list[tuple[float, str]]:
    """Faults on a fixed cycle until ``until``; everything healed on return."""
    log: list[tuple[float, str]] = []
    t0 = monotonic()

    def note(what: str) -> None:
        log.append((round(monotonic() - t0, 3), what))

    def pause(seconds: float) -> bool:
        left = until - monotonic()
        time.sleep(max(0.0, min(seconds, left)))
        return monotonic() < until

    try:
        while pause(0.5):
            note(f"reset {proxy.reset()} connections")
            if not pause(0.5):
                break
            note(f"blackhole {proxy.blackhole('pubsub', new_connections=True)} pub/sub "
                 f"connections")
            pause(2.0)
            note(f"heal {proxy.heal()}")
            if not pause(0.3):
                break
            proxy.set_latency(down=0.03)
            note("latency 30 ms on replies")
            pause(0.6)
            proxy.set_latency()
            note("latency off")
    finally:
        proxy.heal()
        proxy.set_latency()
    return log


def run_soak(
    server_port: int, seconds: float = 5.0, *, procs: int = 4, keys: int = 8,
    faults: bool = True, sabotage: bool = False, seed: int | None = None,
    health_check: tuple[float, float, float] = (1.0, 0.5, 1.0),
) -> dict[str, Any]:
    """Run the soak against the server on ``server_port``; the checker's verdict and stats.

    ``health_check`` is only what the bound is computed from: the workers use the defaults
    (health_check_interval, health_check_timeout, degraded_l1_ttl).
    """
    seed = int(time.time()) if seed is None else seed
    ns = "soak" + uuid.uuid4().hex[:8]
    direct_url = f"redis://127.0.0.1:{server_port}/0"
    tmp = tempfile.mkdtemp(prefix="fleetcache-soak-")
    locks = [CTX.Lock() for _ in range(keys)]
    go = CTX.Event()
    port = CTX.Value("i", 0)
    barrier = CTX.Barrier(procs + 1)
    roles = ["reader"] + ["writer"] * (procs - 1)
    outs = [os.path.join(tmp, f"w{i}.pickle") for i in range(procs)]
    # Fork before the proxy exists: a child holding copies of the proxy's sockets would keep
    # them open after the proxy closes (or resets) them.
    children = [
        CTX.Process(target=_worker, name=f"soak-{i}", daemon=True, args=(_Job(
            i, roles[i], port, direct_url, ns, keys, seconds, locks, go, barrier, outs[i],
            sabotage and roles[i] == "reader", seed),))
        for i in range(procs)
    ]
    for child in children:
        child.start()
    proxy = Proxy(server_port).start()
    fault_log: list[tuple[float, str]] = []
    try:
        port.value = proxy.port
        go.set()
        barrier.wait(60)
        started = monotonic()
        if faults:
            fault_log = _inject(proxy, started + seconds - 0.2)
        for child in children:
            child.join(max(1.0, started + seconds + 30 - monotonic()))
        elapsed = monotonic() - started
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(5)
        proxy.stop()
    try:
        failures = []
        results = []
        for child, out in zip(children, outs, strict=True):
            if os.path.exists(out + ".err"):
                with open(out + ".err") as f:
                    failures.append(f"{child.name}: {f.read()}")
            elif child.exitcode != 0 or not os.path.exists(out):
                failures.append(f"{child.name}: exit code {child.exitcode}, no result")
            else:
                with open(out, "rb") as f:
                    results.append(pickle.load(f))
        if failures:
            raise RuntimeError("soak workers failed:\n" + "\n".join(failures))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    writes = [w for r in results for w in r["writes"]]
    reads = [x for r in results for x in r["reads"]]
    interval, timeout, degraded = health_check
    verdict = check(writes, reads, max(interval + timeout, degraded))
    return {
        **verdict,
        "seconds": round(elapsed, 2),
        "procs": procs,
        "keys": keys,
        "seed": seed,
        "writes": len(writes),
        "failed_writes": sum(1 for w in writes if not w.ok),
        "worker_errors": [e for r in results for e in r["errors"]][:10],
        "reader_reads": sum(len(r["reads"]) for r in results if r["role"] == "reader"),
        "reconnects": [r["stats"]["reconnects"] for r in results],
        "l1_hits": sum(r["stats"]["l1_hits"] for r in results),
        "l2_hits": sum(r["stats"]["l2_hits"] for r in results),
        "redis_errors": sum(r["stats"]["redis_errors"] for r in results),
        "faults": fault_log,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--server", choices=sorted(binaries()), default=sorted(binaries())[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)
    server = Server(binaries()[args.server]).start()
    try:
        result = run_soak(server.port, args.seconds, procs=args.procs, keys=args.keys,
                          faults=not args.no_faults, seed=args.seed)
    finally:
        server.stop()
    ok = (result["stale_beyond_bound"] == 0 and result["impossible_reads"] == 0
          and result["overlapping_writes"] == 0 and not result["worker_errors"])
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"fleetcache race soak on {args.server}, {result['seconds']} s, "
              f"{result['procs']} processes, {result['keys']} hot keys, seed {result['seed']}")
        for name in ("reads", "reader_reads", "writes", "failed_writes", "fresh",
                     "pct_fresh", "stale_within_bound", "pct_within_bound",
                     "stale_beyond_strict_bound", "stale_beyond_bound", "worst_staleness",
                     "p99_staleness_of_stale", "impossible_reads", "overlapping_writes",
                     "l1_hits", "l2_hits", "redis_errors", "reconnects", "worker_errors"):
            print(f"  {name:28} {result[name]}")
        print(f"  bound {result['bound']} s (+{result['slack']} s slack); faults:")
        for at, what in result["faults"]:
            print(f"    {at:7.3f} s  {what}")
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
