"""9. Serve-stale refresh: 4 processes x 25 threads (and x 25 greenlets) ask one stale key.

Every key here is filled with ``ttl=1`` and ``stale_ttl=600`` (dogpile: ``expiration_time=1``,
Redis keeps the value 601 s), then left to go stale (a real wait: the processes share no
clock but CLOCK_MONOTONIC and the wall clock). Two bursts per peer, the compute taking
200 ms in both:

* **refresh**: all 100 callers call ``get_or_compute`` (dogpile: ``get_or_create``) on the
  stale key at one shared instant. Reported: the latency of every caller (p50/p90/p99/max,
  the one that computes included: fleetcache computes in the background, dogpile in the
  caller that takes its lock), how many callers were served the stale value, how many
  computes ran fleet-wide, whether the new value landed, and the Redis commands issued
  from the burst until 0.3 s after the compute's 200 ms, the refresh's store included
  (``INFO commandstats`` delta). fleetcache runs it
  twice: with the stale copy in every process's L1 (a hot key every worker has been
  serving: each read it while it was fresh) and with the stale value only in L2 (filled by
  a cache of its own, closed after);
* **fail-safe**: the compute raises every time (after its 200 ms). Each of the 100 callers
  calls every 50 ms for 1.5 s (0.8 s with --quick), less than ``fail_safe_throttle`` (2 s,
  set here explicitly) after the first failure. Reported: errors seen by callers, calls
  served the stale value, computes fleet-wide, latency of every call (the ones that raised
  included), Redis commands.

Peers: fleetcache (background refresh under the fleet lock, fail-safe throttle) and
dogpile.cache's redis region with ``distributed_lock=True`` (the caller that takes the lock
runs the creator while the others get the old value; a creator's exception reaches that
caller). Ratios (fleetcache's p99 over dogpile's) are taken per round, the peers' order
rotated every round, then the median.

Each process is a ``python -m benchmarks.stale --worker`` child (with ``--gevent`` it
monkey-patches first thing, as stampede's do); computes are counted in the processes that
run them, when they start. A peer's clients exist only while it is measured, so
fleetcache's bus PINGs are never counted against dogpile.

    python -m benchmarks.stale [--quick] [--mode threads|gevent]
"""

import sys

if __name__ == "__main__" and "--gevent" in sys.argv:  # before any other import
    from gevent import monkey

    monkey.patch_all()

# ruff: noqa: PLC0415 - peers are imported after gevent patched, where measured
import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import harness as h

NAME = "stale"
ROUNDS = (1, 5)  # (--quick, full)
PROCESSES = 4
CALLERS = 25
COMPUTE_S = 0.2
FRESH_S = 1.0  # ttl (dogpile: expiration_time)
STALE_S = 600.0  # stale_ttl (dogpile: Redis keeps the value FRESH_S + STALE_S)
THROTTLE_S = 2.0  # fleetcache's fail_safe_throttle, set explicitly
CALL_EVERY_S = 0.05  # fail-safe burst: each caller's pause between calls
LEAD_S = 0.25  # a burst starts this long after the parent sends it
SETTLE_S = 0.3  # after the slowest caller, time for a background refresh to land
LATENCY_GOAL_MS = 5.0
MODES = ("threads", "gevent")
FLEETCACHE = "fleetcache"
DOGPILE = "dogpile distributed_lock"
PEERS = (FLEETCACHE, DOGPILE)
L1_ROW = "fleetcache (stale copy in L1)"
L2_ROW = "fleetcache (stale only in L2)"
REFRESH_ROWS = (L1_ROW, L2_ROW, DOGPILE)
FAIL_ROWS = (FLEETCACHE, DOGPILE)
STAT_FIELDS = ("computes", "stale_served", "refreshes", "refresh_errors", "l1_hits",
               "l2_hits", "misses", "lock_waits", "listener_waits", "redis_errors")


@dataclass(frozen=True)
class Case:
    """One burst of one peer: a table row of one scenario."""

    row: str
    peer: str
    scenario: str  # "refresh" or "fail"
    in_l1: bool  # every process read the key while it was fresh


CASES = (
    Case(L1_ROW, FLEETCACHE, "refresh", True),
    Case(L2_ROW, FLEETCACHE, "refresh", False),
    Case(FLEETCACHE, FLEETCACHE, "fail", True),
    Case(DOGPILE, DOGPILE, "refresh", True),
    Case(DOGPILE, DOGPILE, "fail", True),
)


# -- the worker process -----------------------------------------------------------------------


class DatabaseDown(Exception):
    """What the failing compute raises."""


class _Computes:
    """One peer's computes in this process: counted when they start; how many still run."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self._lock = threading.Lock()

    def __call__(self, raises: bool) -> dict[str, Any]:
        with self._lock:
            self.started += 1
            self.running += 1
        try:
            time.sleep(COMPUTE_S)  # gevent's sleep once patched
            if raises:
                raise DatabaseDown("the database is down")
            return {"id": uuid.uuid4().hex, "by": os.getpid()}
        finally:
            with self._lock:
                self.running -= 1


def _fill_value() -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "by": os.getpid()}


@dataclass
class _Peer:
    """One peer as built in a (maybe patched) worker process."""

    ask: Callable[[str, Callable[[], Any]], Any]  # the serve-stale read
    peek: Callable[[str], Any]  # a plain read: None if missing or past its fresh time
    fill: Callable[[list[str]], dict[str, str]]  # store a fresh value per key: their ids
    stats: Callable[[], dict[str, int]]
    close: Callable[[], None]
    connections: Callable[[int], None] = lambda n: None  # open n pool connections now


def _make_peer(name: str, url: str, ns: str) -> _Peer:
    if name == FLEETCACHE:
        from fleetcache import FleetCache

        cache = FleetCache.from_url(url, namespace=ns, fail_safe_throttle=THROTTLE_S)
        cache.connect(wait=5)

        def fill(keys: list[str]) -> dict[str, str]:
            # A cache of its own, closed after: the values are in L2 only, in no L1.
            with FleetCache.from_url(url, namespace=ns) as filler:
                return {k: filler.get_or_compute(k, _fill_value, ttl=FRESH_S,
                                                 stale_ttl=STALE_S)["id"] for k in keys}

        def stats() -> dict[str, int]:
            snapshot = cache.stats()
            return {f: getattr(snapshot, f) for f in STAT_FIELDS}

        return _Peer(
            ask=lambda key, compute: cache.get_or_compute(key, compute, ttl=FRESH_S,
                                                          stale_ttl=STALE_S),
            peek=cache.get, fill=fill, stats=stats, close=cache.close)
    if name == DOGPILE:
        from dogpile.cache import make_region
        from dogpile.cache.api import NO_VALUE

        region = make_region(key_mangler=lambda k: f"{ns}:{k}").configure(
            "dogpile.cache.redis", expiration_time=FRESH_S,
            arguments={"url": url, "distributed_lock": True, "thread_local_lock": False,
                       "lock_timeout": 10, "redis_expiration_time": int(FRESH_S + STALE_S)})

        def peek(key: str) -> Any:
            value = region.get(key)  # NO_VALUE past expiration_time
            return None if value is NO_VALUE else value

        def connections(n: int) -> None:
            # Every caller reads Redis at once in a burst: a warm-up read per caller leaves
            # fewer connections than that (they do not all overlap), so open them here.
            pool = region.backend.writer_client.connection_pool
            held = [pool.get_connection() for _ in range(n)]
            for conn in held:
                pool.release(conn)

        return _Peer(
            ask=region.get_or_create, peek=peek,
            fill=lambda keys: {k: region.get_or_create(k, _fill_value)["id"] for k in keys},
            stats=dict, close=region.backend.writer_client.close, connections=connections)
    raise ValueError(name)


def _burst(ask: Callable[[str, Callable[[], Any]], Any], key: str, callers: int, *,
           old_id: str = "", compute: Callable[[], Any] = _fill_value, start_at: float = 0.0,
           until: float | None = None) -> dict[str, Any]:
    """``callers`` threads (greenlets once patched) call ``ask(key, compute)`` at
    ``start_at``: once each, or (``until``) every CALL_EVERY_S until then."""
    latencies: list[float] = []
    errors: list[str] = []
    served = {"stale": 0, "new": 0}
    lock = threading.Lock()

    def caller() -> None:
        time.sleep(max(0.0, start_at - time.monotonic()))
        while True:
            t0 = time.monotonic()
            try:
                value = ask(key, compute)
            except Exception as exc:
                elapsed = time.monotonic() - t0
                with lock:
                    latencies.append(elapsed * 1000)
                    errors.append(f"{type(exc).__name__}: {exc}")
            else:
                elapsed = time.monotonic() - t0
                with lock:
                    latencies.append(elapsed * 1000)
                    fresh = not isinstance(value, dict) or value.get("id") != old_id
                    served["new" if fresh else "stale"] += 1
            if until is None:
                return
            time.sleep(CALL_EVERY_S)
            if time.monotonic() >= until:
                return

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat_ms": latencies, "errors": errors, "served": served}


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class _Worker:
    """The commands of one worker process (one line each, answered by one line)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.peers: dict[str, _Peer] = {}
        self.computes: dict[str, _Computes] = {}
        self.last: dict[str, Any] = {}  # the last burst, for "check"

    def open(self, name: str) -> Any:
        """Make the peer; every caller does a plain read (a miss), and dogpile's pool
        opens a connection per caller: a burst measures the protocol, not TCP connects."""
        peer = self.peers[name] = _make_peer(name, self.args.url, self.args.ns)
        self.computes[name] = _Computes()

        def peek(key: str, _compute: Callable[[], Any]) -> Any:
            return peer.peek(key)

        _burst(peek, f"warm:{uuid.uuid4().hex}", self.args.callers)
        peer.connections(self.args.callers)
        return "ready"

    def fill(self, name: str, keys: str) -> Any:
        return self.peers[name].fill(keys.split(","))

    def warm(self, name: str, keys: str) -> Any:
        """Every caller reads each (still fresh) key: fleetcache's L1 keeps it, stale window
        included."""
        for key in keys.split(","):
            _burst(self.peers[name].ask, key, self.args.callers)
        return "ready"

    def go(self, spec: str) -> Any:
        """One burst: ``spec`` is JSON (peer, scenario, key, the stale value's id, start
        and, for the fail-safe burst, end on CLOCK_MONOTONIC)."""
        burst = json.loads(spec)
        name, scenario, key, old_id = (burst[k] for k in ("peer", "scenario", "key", "old_id"))
        peer, count = self.peers[name], self.computes[name]
        raises = scenario == "fail"

        def compute() -> dict[str, Any]:
            return count(raises)

        self.last = {"name": name, "key": key, "old_id": old_id, "scenario": scenario,
                     "computes": count.started, "stats": peer.stats()}
        return _burst(peer.ask, key, self.args.callers, old_id=old_id, compute=compute,
                      start_at=burst["start_at"], until=burst["until"])

    def check(self) -> Any:
        """Once the parent has counted the burst's commands: this process's computes (once
        none runs any more), its counters, and the value it reads now (a refresh: wait for
        the new one)."""
        last = self.last
        peer, count = self.peers[last["name"]], self.computes[last["name"]]
        settled = _wait(lambda: count.running == 0, 10.0)
        after = peer.stats()  # the burst's, before the reads below count themselves

        def new_value() -> Any:
            value = peer.peek(last["key"])
            return value if value is not None and value["id"] != last["old_id"] else None

        value = new_value() if last["scenario"] == "refresh" else peer.peek(last["key"])
        if value is None and last["scenario"] == "refresh":
            _wait(lambda: new_value() is not None, 5.0)
            value = new_value()
        return {"computes": count.started - last["computes"], "settled": settled,
                "value_id": None if value is None else value["id"],
                "stats": {k: after[k] - last["stats"][k] for k in after}}

    def close(self, name: str) -> Any:
        self.peers.pop(name).close()
        return "ready"


def worker(args: argparse.Namespace) -> None:
    me = _Worker(args)
    commands: dict[str, Callable[..., Any]] = {
        "open": me.open, "fill": me.fill, "warm": me.warm, "go": me.go, "check": me.check,
        "close": me.close}
    h.say("ready")
    while True:
        line = h.read_line(args.gevent)
        if not line or line == "exit":
            break
        cmd, _, rest = line.partition(" ")
        h.say(commands[cmd](*(rest.split("\t") if rest else ())))


# -- the parent -------------------------------------------------------------------------------


def _spawn(mode: str, url: str, ns: str) -> list[h.Child]:
    extra = ["--gevent"] if mode == "gevent" else []
    kids = [h.Child("benchmarks.stale", "--worker", "--url", url, "--ns", ns,
                    "--callers", str(CALLERS), *extra) for _ in range(PROCESSES)]
    for k in kids:
        assert k.recv(60) == "ready"
    return kids


def _all(kids: list[h.Child], line: str, timeout: float = 60.0) -> list[Any]:
    for k in kids:
        k.send(line)
    return [k.recv(timeout) for k in kids]


def _run_case(server: h.Server, kids: list[h.Child], case: Case, key: str, *, old_id: str,
              not_before: float, fail_window: float) -> dict[str, Any]:
    start_at = max(not_before, time.monotonic() + LEAD_S)
    spec = json.dumps({"peer": case.peer, "scenario": case.scenario, "key": key,
                       "old_id": old_id, "start_at": start_at,
                       "until": start_at + fail_window if case.scenario == "fail" else None})
    before = server.commandstats()
    for k in kids:
        k.send(f"go {spec}")
    replies = [k.recv_json(120) for k in kids]
    time.sleep(max(SETTLE_S, start_at + COMPUTE_S + SETTLE_S - time.monotonic()))
    after = server.commandstats()
    for k in kids:
        k.send("check")
    checks = [k.recv_json(60) for k in kids]
    lat = [x for rep in replies for x in rep["lat_ms"]]
    stats = {f: sum(c["stats"].get(f, 0) for c in checks) for f in STAT_FIELDS}
    value_ids = {c["value_id"] for c in checks}
    return {
        "computes": sum(c["computes"] for c in checks),
        "latency_ms": h.pcts(lat),
        "calls": len(lat),
        "served_stale": sum(rep["served"]["stale"] for rep in replies),
        "served_new": sum(rep["served"]["new"] for rep in replies),
        "error_count": sum(len(rep["errors"]) for rep in replies),
        "errors": [e for rep in replies for e in rep["errors"]][:5],
        # refresh: every process then reads one new value; fail-safe: none reads a fresh
        # value (nothing was stored: the stale one stays in service)
        "refreshed": (len(value_ids) == 1 and None not in value_ids
                      and old_id not in value_ids) if case.scenario == "refresh" else None,
        "no_new_value": value_ids == {None} if case.scenario == "fail" else None,
        "settled": all(c["settled"] for c in checks),
        "commands": sum(h.command_delta(before, after).values()),
        "commands_by_name": h.command_delta(before, after),
        "fleetcache_stats": stats if case.peer == FLEETCACHE else None,
    }


def _measure_peer(server: h.Server, kids: list[h.Child], peer: str, r: int,
                  fail_window: float) -> dict[tuple[str, str], dict[str, Any]]:
    cases = [c for c in CASES if c.peer == peer]
    keys = {c: f"stale:{r}:{c.scenario}:{int(c.in_l1)}:{uuid.uuid4().hex[:12]}" for c in cases}
    assert set(_all(kids, f"open {peer}")) == {"ready"}
    kids[0].send(f"fill {peer}\t{','.join(keys.values())}")
    ids = kids[0].recv_json(60)
    stale_at = time.monotonic() + FRESH_S + 0.1  # filled before this reply arrived
    time.sleep(0.05)  # the fill's notices reach every listener first
    warm = [keys[c] for c in cases if c.in_l1]
    assert set(_all(kids, f"warm {peer}\t{','.join(warm)}")) == {"ready"}
    assert time.monotonic() < stale_at - 0.1, "warming took longer than ttl"
    out = {(c.scenario, c.row): _run_case(server, kids, c, keys[c], old_id=ids[keys[c]],
                                          not_before=stale_at, fail_window=fail_window)
           for c in cases}
    assert set(_all(kids, f"close {peer}", 30)) == {"ready"}
    return out


def measure(opts: h.Options, server: h.Server, modes: tuple[str, ...]) -> dict[str, Any]:
    fail_window = opts.pick(0.8, 1.5)
    rounds: dict[str, Any] = {}
    for mode in modes:
        ns = f"stale-{mode}-{os.getpid()}"
        kids = _spawn(mode, server.url, ns)
        rounds[mode] = {"refresh": {row: [] for row in REFRESH_ROWS},
                        "fail": {row: [] for row in FAIL_ROWS}, "order": []}
        try:
            for r in range(opts.rounds):
                order = PEERS[r % len(PEERS):] + PEERS[:r % len(PEERS)]
                rounds[mode]["order"].append(list(order))
                for peer in order:
                    for (scenario, row), result in _measure_peer(server, kids, peer, r,
                                                                 fail_window).items():
                        rounds[mode][scenario][row].append(result)
                server.client().flushall()
        finally:
            for k in kids:
                k.close()
    return rounds


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarize(rounds: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for mode, scenarios in rounds.items():
        figures[mode] = {}
        for scenario in ("refresh", "fail"):
            rows = scenarios[scenario]
            dog = rows[DOGPILE]
            figures[mode][scenario] = {}
            for row, rs in rows.items():
                figures[mode][scenario][row] = {
                    "computes_median": h.median(r["computes"] for r in rs),
                    "computes_max": max(r["computes"] for r in rs),
                    "latency_ms": h.median_rounds([r["latency_ms"] for r in rs]),
                    # per round, against dogpile's burst of the same round
                    "p99_ratio_to_dogpile": h.median(
                        _ratio(r["latency_ms"]["p99"], d["latency_ms"]["p99"])
                        for r, d in zip(rs, dog, strict=True)),
                    "p50_ratio_to_dogpile": h.median(
                        _ratio(r["latency_ms"]["p50"], d["latency_ms"]["p50"])
                        for r, d in zip(rs, dog, strict=True)),
                    "calls_median": h.median(r["calls"] for r in rs),
                    "calls_min": min(r["calls"] for r in rs),
                    "served_stale_median": h.median(r["served_stale"] for r in rs),
                    "served_new_median": h.median(r["served_new"] for r in rs),
                    "errors": sum(r["error_count"] for r in rs),
                    "errors_median": h.median(r["error_count"] for r in rs),
                    "refreshed_every_round": all(r["refreshed"] for r in rs)
                    if scenario == "refresh" else None,
                    "no_new_value_every_round": all(r["no_new_value"] for r in rs)
                    if scenario == "fail" else None,
                    "all_served_stale_every_round": all(r["served_stale"] == r["calls"]
                                                        for r in rs),
                    "commands_median": h.median(r["commands"] for r in rs),
                }
    return figures


def _unit(mode: str) -> str:
    return "threads" if mode == "threads" else "greenlets"


def tables(figures: dict[str, Any], fail_window: float) -> list[h.Table]:
    out = []
    for mode, scenarios in figures.items():
        t = h.Table(f"Serve-stale refresh: {PROCESSES} processes x {CALLERS} {_unit(mode)}, "
                    f"one stale key, compute {COMPUTE_S * 1000:.0f} ms",
                    ["peer", "computes", "p50 ms", "p90 ms", "p99 ms", "max ms",
                     "p99 x dogpile", "served stale", "refreshed", "Redis cmds", "errors"],
                    note="median over rounds; latency over all 100 callers (dogpile's "
                         "computing caller included, it is the max); served stale: callers "
                         "given the old value; refreshed: every process then read one new "
                         "value, every round; Redis cmds from the burst until 0.3 s after "
                         "the compute's end.")
        for row, fig in scenarios["refresh"].items():
            lat = fig["latency_ms"]
            t.add(row, fig["computes_median"], lat["p50"], lat["p90"], lat["p99"], lat["max"],
                  "-" if row == DOGPILE else h.fmt_ratio(fig["p99_ratio_to_dogpile"]),
                  fig["served_stale_median"], "yes" if fig["refreshed_every_round"] else "NO",
                  fig["commands_median"], fig["errors"])
        out.append(t)
        t = h.Table(f"Fail-safe: the compute raises every time; {PROCESSES} x {CALLERS} "
                    f"{_unit(mode)} call every {CALL_EVERY_S * 1000:.0f} ms for "
                    f"{fail_window:g} s (fail_safe_throttle {THROTTLE_S:g} s)",
                    ["peer", "computes", "calls", "errors", "served stale", "p50 ms",
                     "p99 ms", "max ms", "p99 x dogpile", "Redis cmds"],
                    note="median over rounds (errors: sum over rounds); latency over every "
                         "call, the ones that raised included.")
        for row, fig in scenarios["fail"].items():
            lat = fig["latency_ms"]
            t.add(row, fig["computes_median"], fig["calls_median"], fig["errors"],
                  fig["served_stale_median"], lat["p50"], lat["p99"], lat["max"],
                  "-" if row == DOGPILE else h.fmt_ratio(fig["p99_ratio_to_dogpile"]),
                  fig["commands_median"])
        out.append(t)
    return out


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for mode, scenarios in figures.items():
        refresh, fail = scenarios["refresh"], scenarios["fail"]
        hot = refresh[L1_ROW]
        out.append(h.goal(
            f"{mode}: refresh: p99 caller latency < {LATENCY_GOAL_MS:g} ms (stale copy in L1)",
            hot["latency_ms"]["p99"], f"< {LATENCY_GOAL_MS:g} ms",
            hot["latency_ms"]["p99"] < LATENCY_GOAL_MS,
            f"stale only in L2: p99 {h.fmt(refresh[L2_ROW]['latency_ms']['p99'])} ms; "
            f"dogpile {h.fmt(refresh[DOGPILE]['latency_ms']['p99'])} ms"))
        worst = max(refresh[row]["computes_max"] for row in (L1_ROW, L2_ROW))
        ok = all(refresh[row]["computes_max"] == 1 and refresh[row]["errors"] == 0
                 and refresh[row]["refreshed_every_round"] for row in (L1_ROW, L2_ROW))
        out.append(h.goal(
            f"{mode}: refresh: exactly 1 compute fleet-wide, and it lands (every round)",
            worst, "1", ok,
            f"{refresh[L1_ROW]['errors'] + refresh[L2_ROW]['errors']} errors; "
            f"dogpile {h.fmt(refresh[DOGPILE]['computes_max'])}"))
        fc = fail[FLEETCACHE]
        out.append(h.goal(
            f"{mode}: fail-safe: zero errors while the compute raises", fc["errors"], "0",
            fc["errors"] == 0 and fc["calls_min"] > 0 and fc["all_served_stale_every_round"]
            and fc["no_new_value_every_round"],
            f"{h.fmt(fc['calls_median'])} calls per round; dogpile "
            f"{h.fmt(fail[DOGPILE]['errors_median'])} errors per round"))
        out.append(h.goal(
            f"{mode}: fail-safe: exactly 1 compute during the burst (throttle)",
            fc["computes_max"], "1", fc["computes_max"] == 1,
            f"dogpile {h.fmt(fail[DOGPILE]['computes_median'])}"))
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    modes = list(figures)

    def series(scenario: str, rows: tuple[str, ...], metric: Callable[[dict[str, Any]], Any],
               upper: Callable[[dict[str, Any]], Any] | None = None) -> list[dict[str, Any]]:
        out = []
        for m in modes:
            figs = [figures[m][scenario][row] for row in rows]
            s: dict[str, Any] = {"label": m, "values": [metric(f) for f in figs]}
            if upper:
                s["upper"] = [upper(f) for f in figs]
            out.append(s)
        return out

    panels = [
        {"title": "refresh: caller latency, ms (bar p50, whisker p99)", "unit": "ms",
         "log": True, "categories": list(REFRESH_ROWS),
         "series": series("refresh", REFRESH_ROWS, lambda f: f["latency_ms"]["p50"],
                          lambda f: f["latency_ms"]["p99"]),
         "hline": {"y": LATENCY_GOAL_MS, "label": f"{LATENCY_GOAL_MS:g} ms goal"}},
        {"title": "fail-safe: errors seen by callers, per round", "unit": "errors",
         "categories": list(FAIL_ROWS),
         "series": series("fail", FAIL_ROWS, lambda f: f["errors_median"])},
        {"title": "computes fleet-wide (refresh burst; fail-safe burst)", "unit": "computes",
         "categories": [f"refresh: {r}" for r in REFRESH_ROWS]
                       + [f"fail-safe: {r}" for r in FAIL_ROWS],
         "series": [{"label": m,
                     "values": [figures[m]["refresh"][r]["computes_median"]
                                for r in REFRESH_ROWS]
                               + [figures[m]["fail"][r]["computes_median"] for r in FAIL_ROWS]}
                    for m in modes]},
    ]
    return {"title": f"Serve-stale: {PROCESSES} x {CALLERS} callers, one stale key",
            "panels": panels}


def run(opts: h.Options, modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    rounds, version, started = h.on_server(lambda server: measure(opts, server, modes))
    figures = summarize(rounds)
    fail_window = opts.pick(0.8, 1.5)
    params = {"processes": PROCESSES, "callers_per_process": CALLERS,
              "compute_ms": COMPUTE_S * 1000, "ttl_s": FRESH_S, "stale_ttl_s": STALE_S,
              "fail_safe_throttle_s": THROTTLE_S, "fail_window_s": fail_window,
              "fail_call_every_ms": CALL_EVERY_S * 1000, "modes": list(modes),
              "peers": list(PEERS), "rows": {"refresh": list(REFRESH_ROWS),
                                             "fail": list(FAIL_ROWS)}}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=rounds, tables=tables(figures, fail_window),
                    goals=goals(figures), chart=chart(figures))


def main() -> None:
    parser = h.parser("python -m benchmarks.stale", child="--worker")
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--gevent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, default=CALLERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        worker(args)
        return
    run(h.options(args, ROUNDS), tuple(args.mode) if args.mode else MODES)


if __name__ == "__main__":
    main()
