"""4. Stampede: 4 processes x 25 threads (and x 25 greenlets) ask one cold key at once.

The compute takes 200 ms. Reported per peer: how many computes ran fleet-wide, the
latency of every caller (p50/p90/p99/max over the 100 callers, the winner included), how
many distinct values the callers got, and the Redis commands issued during the burst
(``INFO commandstats`` delta, by command). Peers:

* fleetcache ``get_or_compute`` (in-process single flight + a non-blocking Redlock, waiters
  woken by the winner's notice);
* naive cache-aside: GET, on a miss compute and SET (no lock);
* dogpile.cache redis region with ``distributed_lock=True`` (redis-py's Lock, polled);
* Flask-Caching ``@cache.memoize`` on its RedisCache (no lock).

Each process is a ``python -m benchmarks.stampede --worker`` child; with ``--gevent`` it
monkey-patches first thing (below), before anything makes a socket or a lock. A peer's
clients are made when it is first warmed and closed when the parent is done with it, so a
peer's background traffic (fleetcache's bus PINGs) is never counted against another.
The callers of all processes start at one shared moment (CLOCK_MONOTONIC is system-wide).

    python -m benchmarks.stampede [--quick]
"""

import sys

if __name__ == "__main__" and "--gevent" in sys.argv:  # before any other import
    from gevent import monkey

    monkey.patch_all()

# ruff: noqa: PLC0415 - peers are imported after gevent patched, where measured
import argparse
import os
import threading
import time
import uuid
from typing import Any

from . import harness as h

NAME = "stampede"
ROUNDS = (1, 5)  # (--quick, full)
PROCESSES = 4
CALLERS = 25
COMPUTE_S = 0.2
PEERS = ("fleetcache", "naive cache-aside", "dogpile distributed_lock", "flask-caching memoize")
MODES = ("threads", "gevent")


# -- the worker process -----------------------------------------------------------------------


class _Computes:
    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def __call__(self, key: str) -> dict[str, Any]:
        with self._lock:
            self.n += 1
        time.sleep(COMPUTE_S)  # gevent's sleep once patched: the callers' greenlets run on
        return {"key": key, "by": os.getpid(), "id": uuid.uuid4().hex}


def _make_peer(name: str, url: str, ns: str, compute: _Computes) -> tuple[Any, Any, Any]:
    """``(ask(key), warm(key), close())`` of one peer, built in this (maybe patched) process.

    ``warm`` is a plain read (a miss): run by every caller at once before a burst, it leaves
    one open connection per caller in the peer's pool, so the burst measures the protocol,
    not TCP connects.
    """
    if name == "fleetcache":
        from fleetcache import FleetCache

        cache = FleetCache.from_url(url, namespace=ns)
        cache.connect(wait=5)
        return ((lambda key: cache.get_or_compute(key, lambda: compute(key), ttl=60)),
                (lambda key: {"id": repr(cache.get(key))}), cache.close)
    if name == "naive cache-aside":
        import msgspec
        import redis

        r = redis.Redis.from_url(url)
        enc, dec = msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder().decode

        def naive(key: str) -> Any:
            blob = r.get(f"{ns}:{key}")
            if blob is not None:
                return dec(blob)
            value = compute(key)
            r.set(f"{ns}:{key}", enc(value), ex=60)
            return value

        return naive, (lambda key: {"id": repr(r.get(f"{ns}:{key}"))}), r.close
    if name == "dogpile distributed_lock":
        from dogpile.cache import make_region

        region = make_region(key_mangler=lambda k: f"{ns}:{k}").configure(
            "dogpile.cache.redis", expiration_time=60,
            arguments={"url": url, "distributed_lock": True, "thread_local_lock": False,
                       "lock_timeout": 10, "redis_expiration_time": 60})
        return ((lambda key: region.get_or_create(key, lambda: compute(key))),
                (lambda key: {"id": repr(region.get(key))}), (lambda: None))
    if name == "flask-caching memoize":
        from flask import Flask
        from flask_caching import Cache

        app = Flask("stampede")
        fc = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": url,
                                "CACHE_KEY_PREFIX": f"{ns}:", "CACHE_DEFAULT_TIMEOUT": 60})

        @fc.memoize(timeout=60)
        def memoized(key: str) -> Any:
            return compute(key)

        def ask(key: str) -> Any:
            with app.app_context():
                return memoized(key)

        def warm(key: str) -> Any:
            with app.app_context():
                return {"id": repr(fc.get(key))}

        return ask, warm, (lambda: None)
    raise ValueError(name)


def _burst(ask: Any, key: str, start_at: float, callers: int) -> dict[str, Any]:
    """``callers`` threads (greenlets once patched) call ``ask(key)`` at ``start_at``."""
    latencies: list[float] = []
    values: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()

    def caller() -> None:
        time.sleep(max(0.0, start_at - time.monotonic()))
        t0 = time.monotonic()
        try:
            value = ask(key)
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            return
        elapsed = time.monotonic() - t0
        with lock:
            latencies.append(elapsed * 1000)
            values.add(value["id"] if isinstance(value, dict) else repr(value))

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat_ms": latencies, "values": sorted(values), "errors": errors}


def worker(args: argparse.Namespace) -> None:
    compute: dict[str, _Computes] = {}
    peers: dict[str, tuple[Any, Any, Any]] = {}
    h.say("ready")
    while True:
        line = h.read_line(args.gevent)
        if not line or line == "exit":
            break
        cmd, _, rest = line.partition(" ")
        if cmd == "warm":  # make the peer, and open its pool's connections before the burst
            peer = rest
            if peer not in peers:
                compute[peer] = _Computes()
                peers[peer] = _make_peer(peer, args.url, args.ns, compute[peer])
            _burst(peers[peer][1], f"warm:{uuid.uuid4().hex}", 0.0, args.callers)
            h.say("ready")
        elif cmd == "go":
            peer, key, start_at = rest.split("\t")
            before = compute[peer].n
            result = _burst(peers[peer][0], key, float(start_at), args.callers)
            result["computes"] = compute[peer].n - before
            h.say(result)
        elif cmd == "close":
            peers.pop(rest)[2]()
            h.say("ready")


# -- the parent -------------------------------------------------------------------------------


def _spawn(mode: str, url: str, ns: str) -> list[h.Child]:
    extra = ["--gevent"] if mode == "gevent" else []
    kids = [h.Child("benchmarks.stampede", "--worker", "--url", url, "--ns", ns,
                    "--callers", str(CALLERS), *extra) for _ in range(PROCESSES)]
    for k in kids:
        assert k.recv(60) == "ready"
    return kids


def measure(opts: h.Options, server: h.Server, modes: tuple[str, ...]) -> dict[str, Any]:
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for mode in modes:
        ns = f"stampede-{mode}-{os.getpid()}"
        kids = _spawn(mode, server.url, ns)
        rounds[mode] = {}
        try:
            for peer in PEERS:
                rounds[mode][peer] = []
                for r in range(opts.rounds):
                    for k in kids:
                        k.send(f"warm {peer}")
                    for k in kids:
                        assert k.recv(60) == "ready"
                    time.sleep(0.05)
                    key = f"cold:{r}:{uuid.uuid4().hex[:12]}"
                    before = server.commandstats()
                    start_at = time.monotonic() + 0.25
                    for k in kids:
                        k.send(f"go {peer}\t{key}\t{start_at}")
                    replies = [k.recv_json(120) for k in kids]
                    after = server.commandstats()
                    lat = [x for rep in replies for x in rep["lat_ms"]]
                    rounds[mode][peer].append({
                        "computes": sum(rep["computes"] for rep in replies),
                        "latency_ms": h.pcts(lat),
                        "callers_answered": len(lat),
                        "distinct_values": len({v for rep in replies for v in rep["values"]}),
                        "errors": [e for rep in replies for e in rep["errors"]][:5],
                        "error_count": sum(len(rep["errors"]) for rep in replies),
                        "commands": sum(h.command_delta(before, after).values()),
                        "commands_by_name": h.command_delta(before, after),
                    })
                for k in kids:
                    k.send(f"close {peer}")
                for k in kids:
                    assert k.recv(30) == "ready"
                server.client().flushall()
        finally:
            for k in kids:
                k.close()
    return rounds


def summarize(rounds: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for mode, peers in rounds.items():
        figures[mode] = {}
        for peer, rs in peers.items():
            figures[mode][peer] = {
                "computes_median": h.median(r["computes"] for r in rs),
                "computes_max": max(r["computes"] for r in rs),
                "latency_ms": h.median_rounds([r["latency_ms"] for r in rs]),
                "commands_median": h.median(r["commands"] for r in rs),
                "distinct_values_max": max(r["distinct_values"] for r in rs),
                "errors": sum(r["error_count"] for r in rs),
                "callers_answered_min": min(r["callers_answered"] for r in rs),
            }
        dog = figures[mode].get("dogpile distributed_lock")
        for fig in figures[mode].values():
            fig["commands_ratio_to_dogpile"] = (fig["commands_median"] / dog["commands_median"]
                                                if dog and dog["commands_median"] else None)
    return figures


def tables(figures: dict[str, Any]) -> list[h.Table]:
    out = []
    for mode, peers in figures.items():
        unit = "threads" if mode == "threads" else "greenlets"
        t = h.Table(f"Stampede: {PROCESSES} processes x {CALLERS} {unit}, one cold key, "
                    f"compute {COMPUTE_S * 1000:.0f} ms",
                    ["peer", "computes", "p50 ms", "p90 ms", "p99 ms", "max ms",
                     "Redis cmds", "x dogpile cmds", "values", "errors"],
                    note="median over rounds (computes: median, max in JSON); latency over "
                         "all callers, the computing one included.")
        for peer, fig in peers.items():
            lat = fig["latency_ms"]
            t.add(peer, fig["computes_median"], lat["p50"], lat["p90"], lat["p99"], lat["max"],
                  fig["commands_median"], h.fmt_ratio(fig["commands_ratio_to_dogpile"]),
                  fig["distinct_values_max"], fig["errors"])
        out.append(t)
    return out


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    bound = COMPUTE_S * 1000 + 30
    for mode, peers in figures.items():
        fc = peers["fleetcache"]
        dog = peers.get("dogpile distributed_lock")
        out.append(h.goal(f"{mode}: exactly 1 compute (every round)", fc["computes_max"], "1",
                          fc["computes_max"] == 1 and fc["errors"] == 0,
                          f"{fc['errors']} errors"))
        out.append(h.goal(f"{mode}: p99 caller latency <= compute + 30 ms",
                          fc["latency_ms"]["p99"], f"<= {bound:.0f} ms",
                          fc["latency_ms"]["p99"] <= bound))
        if dog:
            out.append(h.goal(f"{mode}: fewer Redis commands than dogpile",
                              fc["commands_median"], f"< {dog['commands_median']:.0f}",
                              fc["commands_median"] < dog["commands_median"]))
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    modes = list(figures)
    panels = [
        {"title": "caller latency, ms (bar p50, whisker p99)", "unit": "ms", "log": True,
         "categories": list(PEERS),
         "series": [{"label": m, "values": [figures[m][p]["latency_ms"]["p50"] for p in PEERS],
                     "upper": [figures[m][p]["latency_ms"]["p99"] for p in PEERS]}
                    for m in modes],
         "hline": {"y": COMPUTE_S * 1000 + 30, "label": "compute + 30 ms"}},
        {"title": "computes for one cold key", "unit": "computes", "log": True,
         "categories": list(PEERS),
         "series": [{"label": m, "values": [figures[m][p]["computes_median"] for p in PEERS]}
                    for m in modes]},
        {"title": "Redis commands during the burst", "unit": "commands", "log": True,
         "categories": list(PEERS),
         "series": [{"label": m, "values": [figures[m][p]["commands_median"] for p in PEERS]}
                    for m in modes]},
    ]
    return {"title": f"Stampede: {PROCESSES} x {CALLERS} callers, one cold key", "panels": panels}


def run(opts: h.Options, modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    rounds, version, started = h.on_server(lambda server: measure(opts, server, modes))
    figures = summarize(rounds)
    params = {"processes": PROCESSES, "callers_per_process": CALLERS,
              "compute_ms": COMPUTE_S * 1000, "modes": list(modes),
              "peers": list(PEERS)}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=rounds, tables=tables(figures), goals=goals(figures),
                    chart=chart(figures))


def main() -> None:
    parser = h.parser("python -m benchmarks.stampede", child="--worker")
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--gevent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, default=CALLERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        worker(args)
        return
    run(h.options(args, ROUNDS),
        tuple(args.mode) if args.mode else MODES)


if __name__ == "__main__":
    main()
