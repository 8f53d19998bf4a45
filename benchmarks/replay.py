"""10. After a blip: L1 kept by the replay log, against the flush on every gap (issue 13).

Four worker processes (``python -m benchmarks.replay --worker``), each with a FleetCache on
one namespace (default settings but the variant's), hold the 2,000 most asked-for keys of a
10,000-key zipf(1.1) key set in L1 (the default ``l1_capacity``: L1 is full), then read a
seeded zipf(1.1) stream of their own at a steady ``RATE`` per second (in ticks of 10 ms: a
tick that falls behind is skipped, never caught up in a burst), while the writer (this
process) changes 1% of the keys per second, picked uniformly, each write a new version
``{"v": n}`` of its key. After ``PRE_S`` of steady reads comes the blip:

* ``kill``: ``CLIENT KILL TYPE pubsub`` (every subscriber connection at once, the writer's
  included; the data connections are left alone): the listeners reconnect after their first
  backoff (50 ms);
* ``outage``: the workers reach Redis through a loopback proxy (``tests/chaos/proxy.py``,
  as the chaos tests do) that cuts every connection of theirs and refuses new ones for
  ``OUTAGE_S``: the subscriber cannot reconnect, and reads miss L2 too (the writer, not
  proxied, goes on writing). The listener comes back at its next backoff step after that.

Variants, in the same rounds (their order rotated every round): ``replay`` (the default
settings: a gap suspends L1 and the missed notices are replayed from the namespace's log)
and ``flush`` (``replay_log_length=0`` in every process: each gap flushes L1, the
behaviour before 0.2). Each measurement has a fresh namespace and fresh caches.

* **retained**: each worker notes which keys its L1 holds live just before the blip and
  looks again the moment its listener is back (its ``reconnects`` counted after the
  catch-up and ``bus_connected``, polled every 2 ms): the share of those keys not written
  meanwhile (the writer's log, from the note to the reconnect) that L1 serves again.
  "Restored" counts only the entries given their original lifetime back; the others were
  read again from L2 during the gap and live ``degraded_l1_ttl`` (1 s).
* **hit ratio per second**: L1 hits (``stats().l1_hits``, read every tick) over reads, in
  the second before the blip and in each 1-second bucket after it, all workers summed.
* **L2 reads**: GET + MGET calls on the server (``INFO commandstats`` delta, everything
  counted: listeners' epoch checks too) in the ``POST_S`` after the blip; the workers' own
  count (``l2_hits + misses``) alongside. The ratio replay / flush is taken per round.
* **stale**: every read is checked against the writer's log: a read that started more
  than ``GRACE_S`` after the writer's call for a newer version of its key returned, and
  got an older version, is stale. While the bus is down, entries read from L2 live
  ``degraded_l1_ttl`` (1 s) and may miss a write until the replay: the documented bound is
  ``max(health_check_interval + health_check_timeout, degraded_l1_ttl)`` = 1.5 s. A read
  stale past that bound is a lost invalidation (the correctness goal); stale reads within
  it are counted apart.

Second part, the write path's cost of the log: one process, ``SETS`` calls of ``cache.set``
(small values, 1,000 keys in turn) with ``replay_log_length=10000`` and ``0``, interleaved in
blocks of 1,000 (the order of each pair of blocks alternating, and rotated every round),
each call timed; the commands one ``set`` runs on the server are counted apart.

    python -m benchmarks.replay [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - fleetcache, numpy and the proxy are imported where they are used
import argparse
import bisect
import json
import logging
import random
import threading
import time
import uuid
from typing import Any

from . import harness as h

NAME = "replay"
ROUNDS = (1, 5)  # (--quick, full)
WORKERS = 4
N_KEYS = 10_000
ZIPF_S = 1.1
WARM = 2_000  # the default l1_capacity: L1 full
RATE = 500  # reads per second per worker
TICK_S = 0.01
POLL_S = 0.002  # a worker waiting for its listener looks this often (stats(): ~0.14 ms)
WRITES_PER_S = N_KEYS // 100  # 1% of the keys per second
OUTAGE_S = 1.0
GRACE_S = 0.1  # a read this long after a newer write returned must see it
BOUND_S = 1.5  # documented worst case (health_check 1 + 0.5 s, degraded_l1_ttl 1 s)
SNAP_LEAD_S = 0.02  # the pre-blip note of L1 is taken this long before the blip
BUCKETS = 5  # 1-second buckets after the blip (fewer in --quick)
BLIPS = ("kill", "outage")
VARIANTS = ("replay", "flush")
OPTIONS: dict[str, dict[str, Any]] = {"replay": {}, "flush": {"replay_log_length": 0}}
LOG_VARIANTS = {"log 10,000": 10_000, "log off (0)": 0}
BLOCK = 1_000
SET_KEYS = 1_000


def _keys() -> list[str]:
    return [f"k{i}" for i in range(N_KEYS)]


# -- worker process ---------------------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        self.cache: Any = None
        self.keys = _keys()

    def open(self, spec: dict[str, Any]) -> Any:
        """A fresh cache on the measurement's namespace; the WARM hottest keys into L1."""
        from fleetcache import FleetCache
        from fleetcache.testing import l1_size

        self.cache = FleetCache.from_url(spec["url"], namespace=spec["ns"], **spec["options"])
        if not self.cache.connect(wait=5):
            raise RuntimeError("bus not connected")
        warm = self.keys[:WARM]
        for i in range(0, WARM, 100):
            self.cache.get_many(warm[i:i + 100])
        for key in warm:  # whatever get_many did not keep (none, normally)
            self.cache.get(key)
        return {"l1": l1_size(self.cache)}

    def live(self, indices: Any, t: float) -> list[int]:
        from fleetcache.testing import l1_entry

        out = []
        for i in indices:
            entry = l1_entry(self.cache, self.keys[i])
            if entry is not None and entry[1] > t:
                out.append(i)
        return out

    def run(self, spec: dict[str, Any]) -> Any:
        return _Run(self, spec).loop()

    def close(self, _spec: dict[str, Any]) -> Any:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        return {"closed": True}


class _Run:
    """One measurement in a worker: steady reads in ticks, the note of L1 before the blip,
    the wait for the listener after it."""

    def __init__(self, w: _Worker, spec: dict[str, Any]) -> None:
        import numpy as np

        self.w, self.cache, self.keys = w, w.cache, w.keys
        self.start, self.blip_at, self.end = spec["start"], spec["blip_at"], spec["end"]
        rng = np.random.default_rng(spec["seed"])
        weights = 1.0 / np.arange(1, N_KEYS + 1) ** ZIPF_S
        self.stream: list[int] = rng.choice(
            N_KEYS, size=int(RATE * (self.end - self.start)) + RATE,
            p=weights / weights.sum()).tolist()
        self.reads: list[tuple[float, int, int]] = []
        self.ticks: list[tuple[float, int, int, int, int]] = []
        self.pos = self.late = 0
        self.snap: list[int] | None = None
        self.snap_t: float | None = None
        self.down_at: float | None = None
        self.up_at: float | None = None
        self.retained: list[int] = []
        self.restored: list[int] = []
        self.base_reconnects = 0

    def tick_record(self) -> None:
        s = self.cache.stats()
        self.ticks.append((time.monotonic(), self.pos, s.l1_hits, s.l2_hits, s.misses))

    def watch(self, t: float) -> None:
        """After the blip: note when the listener is back and caught up (its reconnect
        counted; redis-py may resubscribe by itself, so the bus need not look down first)
        and what L1 serves at that moment."""
        from fleetcache.testing import connections, l1_entry

        conn = connections(self.cache)
        up = conn is not None and conn.bus_connected
        if not up:
            if self.down_at is None and t >= self.blip_at:
                self.down_at = t
            return
        if t < self.blip_at or self.cache.stats().reconnects <= self.base_reconnects:
            return
        self.up_at = up_at = time.monotonic()
        assert self.snap is not None
        self.retained = self.w.live(self.snap, up_at)
        degraded = self.cache.config.degraded_l1_ttl
        for i in self.retained:
            entry = l1_entry(self.cache, self.keys[i])
            if entry is not None and entry[1] - up_at > degraded + 0.5:
                self.restored.append(i)

    def reads_of_tick(self, n: int) -> None:
        get, now, keys, stream, reads = (self.cache.get, time.monotonic, self.keys,
                                         self.stream, self.reads)
        for _ in range(n):
            i = stream[self.pos]
            self.pos += 1
            t0 = now()
            value = get(keys[i])
            reads.append((round(t0, 6), i, -1 if value is None else int(value["v"])))

    def loop(self) -> dict[str, Any]:
        per_tick = max(1, round(RATE * TICK_S))
        before = self.cache.stats()
        while time.monotonic() < self.start:
            time.sleep(min(0.05, max(0.0, self.start - time.monotonic())))
        self.tick_record()
        next_t = self.start
        while (t := time.monotonic()) < self.end:
            watching = self.snap is not None and self.up_at is None
            if watching:
                self.watch(t)
            if t < next_t:
                time.sleep(min(POLL_S, next_t - t) if watching else next_t - t)
                continue
            if t - next_t > TICK_S:
                self.late += 1  # behind: skip, no catch-up burst
                next_t = t
            if self.snap is None and t >= self.blip_at - SNAP_LEAD_S:
                self.snap_t = t
                self.snap = self.w.live(range(N_KEYS), t)
                self.base_reconnects = self.cache.stats().reconnects
            self.reads_of_tick(per_tick)
            self.tick_record()
            next_t += TICK_S
        after = self.cache.stats()
        return {
            "reads": self.reads, "ticks": self.ticks, "late_ticks": self.late,
            "snap": self.snap, "snap_t": self.snap_t, "down_at": self.down_at,
            "up_at": self.up_at, "retained": self.retained, "restored": self.restored,
            "stats": {f: getattr(after, f) - getattr(before, f) for f in (
                "reconnects", "replays", "invalidations_replayed", "l1_flushes",
                "redis_errors", "l1_suspended_s", "l1_hits", "l2_hits", "misses")},
        }


def worker(_args: argparse.Namespace) -> None:
    # The bus's warnings ("bus down", "reconnected") are what the benchmark provokes.
    logging.getLogger("fleetcache").setLevel(logging.ERROR)
    me = _Worker()
    commands = {"open": me.open, "run": me.run, "close": me.close}
    h.say("ready")
    while True:
        line = h.read_line()
        if not line or line == "exit":
            break
        cmd, _, rest = line.partition(" ")
        h.say(commands[cmd](json.loads(rest or "{}")))
    me.close({})


# -- the parent -------------------------------------------------------------------------------


class _Writer(threading.Thread):
    """Changes WRITES_PER_S uniformly picked keys per second from ``start`` to ``end``;
    ``returned[k][j]`` is when the call writing version j + 1 of key k returned."""

    def __init__(self, cache: Any, start: float, end: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.cache, self.start_at, self.end_at = cache, start, end
        self.rng = random.Random(seed)
        self.returned: dict[int, list[float]] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        keys = _keys()
        i = 0
        try:
            while True:
                due = self.start_at + i / WRITES_PER_S
                if due >= self.end_at:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                k = self.rng.randrange(N_KEYS)
                done = self.returned.setdefault(k, [])
                self.cache.set(keys[k], {"v": len(done) + 1}, ttl=3600)
                done.append(time.monotonic())
                i += 1
        except BaseException as exc:  # reported by the parent
            self.error = exc

    def written(self, t0: float, t1: float) -> set[int]:
        return {k for k, times in self.returned.items()
                if any(t0 <= t <= t1 for t in times)}


def _all(kids: list[h.Child], cmd: str, spec: Any, timeout: float = 60.0) -> list[Any]:
    line = f"{cmd} {json.dumps(spec)}" if spec is not None else cmd
    for k in kids:
        k.send(line)
    return [k.recv_json(timeout) for k in kids]


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _gets(stats: dict[str, int]) -> int:
    return stats.get("get", 0) + stats.get("mget", 0)


def _one(opts: h.Options, server: h.Server, proxy: Any, kids: list[h.Child], *, blip: str,
         variant: str, r: int) -> dict[str, Any]:
    """One blip of one variant on a fresh namespace: the figures of this round."""
    from fleetcache import FleetCache

    pre, post = opts.pick(0.5, 1.0), opts.pick(3.0, float(BUCKETS))
    ns = f"replay-{blip}-{variant}-{r}-{uuid.uuid4().hex[:8]}"
    writer = FleetCache.from_url(server.url, namespace=ns, **OPTIONS[variant])
    assert writer.connect(wait=5)
    keys = _keys()
    for i in range(0, N_KEYS, 500):
        writer.set_many({k: {"v": 0} for k in keys[i:i + 500]}, ttl=3600)
    url = proxy.url() if blip == "outage" else server.url
    opened = _all(kids, "open", {"url": url, "ns": ns, "options": OPTIONS[variant]})
    assert all(o["l1"] == WARM for o in opened), opened
    start = time.monotonic() + 0.3
    blip_at = start + pre
    end = blip_at + post + 0.1
    for n, k in enumerate(kids):
        k.send("run " + json.dumps({"start": start, "blip_at": blip_at, "end": end,
                                    "seed": 1000 * r + 10 * n + BLIPS.index(blip)}))
    wr = _Writer(writer, start, end, seed=r * 7 + BLIPS.index(blip))
    wr.start()
    admin = server.client()
    _sleep_until(start)
    c0 = server.commandstats()
    _sleep_until(blip_at)
    c1 = server.commandstats()
    blipped = time.monotonic()
    if blip == "kill":
        cut = int(admin.client_kill_filter(_type="pubsub"))
    else:
        cut = proxy.refuse()
        time.sleep(OUTAGE_S)
        proxy.heal()
    _sleep_until(blipped + post)
    c2 = server.commandstats()
    replies = [k.recv_json(60 + post) for k in kids]
    wr.join(10)
    admin.close()
    _all(kids, "close", {})
    writer.close()
    if wr.error is not None:
        raise wr.error
    return _analyse(replies, wr, blipped=blipped, pre=pre, post=post, cut=cut,
                    commands={"before": h.command_delta(c0, c1), "after": h.command_delta(c1, c2)})


def _at(ticks: list[list[float]], t: float) -> list[float]:
    """The last tick record at or before ``t`` (the first one if none)."""
    i = bisect.bisect_right([x[0] for x in ticks], t) - 1
    return ticks[max(0, i)]


def _analyse(replies: list[dict[str, Any]], wr: _Writer, *, blipped: float, pre: float,
             post: float, cut: int, commands: dict[str, dict[str, int]]) -> dict[str, Any]:
    windows = [("before", blipped - pre, blipped)] + [
        (f"{b}-{b + 1} s", blipped + b, blipped + b + 1) for b in range(int(post))]
    hits = {name: [0, 0] for name, _, _ in windows}
    kept = restored = untouched = 0
    reconnect = []
    stale_grace = stale_bound = unserved = n_reads = late = rewritten = 0
    max_lag = 0.0
    own_l2 = 0
    for rep in replies:
        ticks = rep["ticks"]
        for name, t0, t1 in windows:
            a, b = _at(ticks, t0), _at(ticks, t1)
            hits[name][0] += int(b[2] - a[2])
            hits[name][1] += int(b[1] - a[1])
        a, b = _at(ticks, blipped), _at(ticks, blipped + post)
        own_l2 += int((b[3] + b[4]) - (a[3] + a[4]))
        if rep["up_at"] is not None:
            reconnect.append(rep["up_at"] - blipped)
            touched = wr.written(rep["snap_t"] - 0.05, rep["up_at"])
            clean = set(rep["snap"]) - touched
            untouched += len(clean)
            kept += len(clean & set(rep["retained"]))
            restored += len(clean & set(rep["restored"]))
        late += rep["late_ticks"]
        for t, k, v in rep["reads"]:
            n_reads += 1
            if v < 0:
                unserved += 1
                continue
            rewritten += v > 0
            times = wr.returned.get(k, [])
            if v < len(times) and times[v] < t:  # version v + 1 had returned before the read
                lag = t - times[v]
                max_lag = max(max_lag, lag)
                stale_grace += lag > GRACE_S
                stale_bound += lag > BOUND_S
    return {
        "retained": kept / untouched if untouched else float("nan"),
        "restored": restored / untouched if untouched else float("nan"),
        "untouched": untouched,
        "hit_ratio": {name: (x / n if n else float("nan")) for name, (x, n) in hits.items()},
        "l2_reads": _gets(commands["after"]),
        "l2_reads_before_per_s": _gets(commands["before"]) / pre,
        "l2_reads_own": own_l2,
        "reconnect_s": {"p50": h.median(reconnect), "max": max(reconnect, default=float("nan")),
                        "n": len(reconnect)},
        "workers_back": len(reconnect),
        "stale_past_grace": stale_grace,
        "stale_past_bound": stale_bound,
        "max_stale_lag_s": max_lag,
        "unserved": unserved,
        "reads": n_reads,
        "reads_of_rewritten_values": rewritten,  # what the stale check had to judge
        "late_ticks": late,
        "writes": sum(len(v) for v in wr.returned.values()),
        "connections_cut": cut,
        "commands": commands,
        "worker_stats": [rep["stats"] for rep in replies],
    }


def _measure_writes(opts: h.Options, server: h.Server) -> dict[str, Any]:
    """set latency with the log on and off, interleaved in blocks; commands per set."""
    from fleetcache import FleetCache

    n = opts.pick(4_000, 20_000)
    names = list(LOG_VARIANTS)
    keys = [f"w{i}" for i in range(SET_KEYS)]
    rounds: list[dict[str, Any]] = []
    for r in range(opts.rounds):
        order = names[r % 2:] + names[:r % 2]
        caches = {name: FleetCache.from_url(
            server.url, namespace=f"writes-{r}-{i}-{uuid.uuid4().hex[:8]}",
            replay_log_length=length) for i, (name, length) in enumerate(LOG_VARIANTS.items())}
        try:
            for c in caches.values():
                assert c.connect(wait=5)
            per_set = {}
            for name in order:  # warm-up, and what one set runs on the server
                before = server.commandstats()
                for i in range(SET_KEYS):
                    caches[name].set(keys[i], {"id": i, "name": "item"}, ttl=3600)
                delta = h.command_delta(before, server.commandstats())
                per_set[name] = {k: v / SET_KEYS for k, v in delta.items()}
            samples: dict[str, list[float]] = {name: [] for name in names}
            perf = h.perf_ns
            for b in range(n // BLOCK):
                for name in (order if b % 2 == 0 else order[::-1]):
                    cset, out = caches[name].set, samples[name]
                    for i in range(BLOCK):
                        key = keys[(b * BLOCK + i) % SET_KEYS]
                        t0 = perf()
                        cset(key, {"id": i, "name": "item"}, ttl=3600)
                        out.append((perf() - t0) / 1000)
        finally:
            for c in caches.values():
                c.close()
        lat = {name: h.pcts(samples[name]) for name in names}
        on, off = lat[names[0]], lat[names[1]]
        rounds.append({"order": order, "latency_us": lat, "commands_per_set": per_set,
                       "ratio_p50": on["p50"] / off["p50"], "ratio_p99": on["p99"] / off["p99"]})
    return {"rounds": rounds, "sets": n}


def measure(opts: h.Options, server: h.Server) -> dict[str, Any]:
    from tests.chaos.proxy import Proxy

    log = logging.getLogger("fleetcache")  # the writer's bus warnings are provoked too
    level = log.level
    log.setLevel(logging.ERROR)
    kids = [h.Child("benchmarks.replay", "--worker") for _ in range(WORKERS)]
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        b: {v: [] for v in VARIANTS} for b in BLIPS}
    orders = []
    try:
        for k in kids:
            assert k.recv(60) == "ready"
        with Proxy(server.port) as proxy:
            for r in range(opts.rounds):
                order = VARIANTS[r % 2:] + VARIANTS[:r % 2]
                orders.append(list(order))
                for blip in BLIPS:
                    for variant in order:
                        raw[blip][variant].append(_one(opts, server, proxy, kids, blip=blip,
                                                       variant=variant, r=r))
    finally:
        for k in kids:
            k.close()
        log.setLevel(level)
    return {"blips": raw, "orders": orders, "writes": _measure_writes(opts, server)}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {"blips": {}, "writes": {}}
    for blip, variants in raw["blips"].items():
        out: dict[str, Any] = {}
        for variant, rounds in variants.items():
            out[variant] = {
                "retained": h.median(r["retained"] for r in rounds),
                "restored": h.median(r["restored"] for r in rounds),
                "hit_ratio": {name: h.median(r["hit_ratio"][name] for r in rounds)
                              for name in rounds[0]["hit_ratio"]},
                "l2_reads": h.median(r["l2_reads"] for r in rounds),
                "l2_reads_own": h.median(r["l2_reads_own"] for r in rounds),
                "l2_reads_before_per_s": h.median(r["l2_reads_before_per_s"] for r in rounds),
                "reconnect_s": h.median_rounds([r["reconnect_s"] for r in rounds]),
                "all_back": all(r["workers_back"] == WORKERS for r in rounds),
                "stale_past_grace": sum(r["stale_past_grace"] for r in rounds),
                "stale_past_bound": sum(r["stale_past_bound"] for r in rounds),
                "max_stale_lag_s": max(r["max_stale_lag_s"] for r in rounds),
                "unserved": sum(r["unserved"] for r in rounds),
                "reads": sum(r["reads"] for r in rounds),
                "late_ticks": sum(r["late_ticks"] for r in rounds),
                "flushes": sum(s["l1_flushes"] for r in rounds for s in r["worker_stats"]),
                "replays": sum(s["replays"] for r in rounds for s in r["worker_stats"]),
            }
        out["l2_ratio"] = h.median(
            _ratio(a["l2_reads"], b["l2_reads"])
            for a, b in zip(variants["replay"], variants["flush"], strict=True))
        figures["blips"][blip] = out
    wrounds = raw["writes"]["rounds"]
    for name in LOG_VARIANTS:
        figures["writes"][name] = {
            "latency_us": h.median_rounds([r["latency_us"][name] for r in wrounds]),
            "commands_per_set": wrounds[0]["commands_per_set"][name]}
    figures["writes"]["ratio_p50"] = h.median(r["ratio_p50"] for r in wrounds)
    figures["writes"]["ratio_p99"] = h.median(r["ratio_p99"] for r in wrounds)
    return figures


def _pct(v: float) -> str:
    return h.fmt(v * 100, 3) + "%"


def tables(figures: dict[str, Any], post: int) -> list[h.Table]:
    blips = figures["blips"]
    t1 = h.Table(
        f"After a blip: {WORKERS} workers, L1 full ({WARM:,} of {N_KEYS:,} zipf {ZIPF_S} "
        f"keys), {RATE} reads/s each, {WRITES_PER_S} writes/s",
        ["blip / variant", "reconnect s p50", "max", "L1 retained", "restored",
         f"L2 reads {post} s", "replay/flush", "workers' own", "L2 reads/s before",
         "stale >0.1 s", "stale >1.5 s", "flushes", "replays"],
        note=("retained: share of the untouched pre-blip L1 keys served from L1 the moment "
              "the listener is back (restored: with their original lifetime; the rest were "
              "read again during the gap and live degraded_l1_ttl); L2 reads: GET+MGET "
              "(INFO commandstats, the listeners' own included) in the seconds after the "
              "blip; workers' own: their l2_hits + misses; stale: reads older than a "
              "write that had returned that long before (1.5 s: the documented bound); "
              "median over rounds, counts summed; reconnect: blip to the worker's listener "
              f"back and caught up (p50 and max over workers; the outage's {OUTAGE_S:g} s "
              "included: the listener's next backoff step after it)."))
    for blip, out in blips.items():
        for variant in VARIANTS:
            f = out[variant]
            t1.add(f"{blip} / {variant}", f["reconnect_s"]["p50"], f["reconnect_s"]["max"],
                   _pct(f["retained"]), _pct(f["restored"]), f["l2_reads"],
                   h.fmt_ratio(out["l2_ratio"]) if variant == "replay" else "1x",
                   f["l2_reads_own"], f["l2_reads_before_per_s"], f["stale_past_grace"],
                   f["stale_past_bound"], f["flushes"], f["replays"])
    names = list(next(iter(blips.values()))["replay"]["hit_ratio"])
    t2 = h.Table("L1 hit ratio per second around the blip (all workers' reads)",
                 ["blip / variant", *names, "reads", "unserved", "late ticks"],
                 note=("L1 hits / reads in the second before the blip and each second "
                       "after it (median over rounds); unserved: reads that got nothing "
                       "(Redis unreachable during the outage); late ticks: 10 ms read "
                       "ticks skipped because the worker was behind."))
    for blip, out in blips.items():
        for variant in VARIANTS:
            f = out[variant]
            t2.add(f"{blip} / {variant}", *[_pct(f["hit_ratio"][n]) for n in names],
                   f["reads"], f["unserved"], f["late_ticks"])
    w = figures["writes"]
    t3 = h.Table("Write path: cache.set (small value, one process), us per call",
                 ["replay log", "p50", "p90", "p99", "max", "n", "ratio p50", "ratio p99",
                  "commands per set"],
                 note=("calls timed one by one, the two variants interleaved in blocks of "
                       f"{BLOCK:,}; ratio to the log off, per round then median; commands: "
                       "INFO commandstats per set, those run inside the script included."))
    for name in LOG_VARIANTS:
        lat = w[name]["latency_us"]
        cmds = ", ".join(f"{k} {v:g}" for k, v in w[name]["commands_per_set"].items())
        on = name == next(iter(LOG_VARIANTS))
        t3.add(name, lat["p50"], lat["p90"], lat["p99"], lat["max"], lat["n"],
               h.fmt_ratio(w["ratio_p50"]) if on else "1x",
               h.fmt_ratio(w["ratio_p99"]) if on else "1x", cmds)
    return [t1, t2, t3]


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    blips = figures["blips"]
    for blip, f in blips.items():
        kept = f["replay"]["retained"]
        out.append(h.goal(f"{blip}: replay keeps >= 95% of the untouched L1 entries",
                          kept * 100, ">= 95%", kept >= 0.95,
                          f"flush keeps {f['flush']['retained']:.1%}; restored with their "
                          f"lifetime {f['replay']['restored']:.1%}"))
    for blip, f in blips.items():
        ratio = f["l2_ratio"]
        out.append(h.goal(f"{blip}: L2 reads in the {len(f['replay']['hit_ratio']) - 1} s "
                          "after the blip lower than flush's (replay/flush)", ratio, "< 1",
                          ratio < 1, f"{h.fmt(f['replay']['l2_reads'])} vs "
                          f"{h.fmt(f['flush']['l2_reads'])} GET+MGET"))
    past = sum(f[v]["stale_past_bound"] for f in blips.values() for v in VARIANTS)
    within = sum(f[v]["stale_past_grace"] for f in blips.values() for v in VARIANTS)
    back = all(f[v]["all_back"] for f in blips.values() for v in VARIANTS)
    out.append(h.goal("zero lost invalidations: no read stale past the 1.5 s bound, every "
                      "listener back", past, "0", past == 0 and back,
                      f"{within} read(s) stale past {GRACE_S} s (within the bound)"
                      + ("" if back else "; some listener never came back")))
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    blips = figures["blips"]
    names = list(next(iter(blips.values()))["replay"]["hit_ratio"])
    rows = [(b, v) for b in blips for v in VARIANTS]
    writes = figures["writes"]
    return {"title": f"After a blip: replay log vs flush ({WORKERS} worker processes)",
            "panels": [
                {"title": "L1 hit ratio per second around the blip", "unit": "%",
                 "categories": names,
                 "series": [{"label": f"{b} / {v}",
                             "values": [blips[b][v]["hit_ratio"][n] * 100 for n in names]}
                            for b, v in rows]},
                {"title": "GET+MGET on the server in the seconds after the blip",
                 "unit": "calls", "categories": list(blips),
                 "series": [{"label": v, "values": [blips[b][v]["l2_reads"] for b in blips]}
                            for v in VARIANTS]},
                {"title": "cache.set latency (bar p50, whisker p99)", "unit": "us",
                 "categories": list(LOG_VARIANTS),
                 "series": [{"label": "p50",
                             "values": [writes[n]["latency_us"]["p50"] for n in LOG_VARIANTS],
                             "upper": [writes[n]["latency_us"]["p99"]
                                       for n in LOG_VARIANTS]}]},
            ]}


def run(opts: h.Options) -> dict[str, Any]:
    raw, version, started = h.on_server(lambda server: measure(opts, server))
    figures = summarize(raw)
    post = int(opts.pick(3.0, float(BUCKETS)))
    params = {"workers": WORKERS, "keys": N_KEYS, "zipf": ZIPF_S, "warm": WARM,
              "reads_per_s_per_worker": RATE, "writes_per_s": WRITES_PER_S,
              "outage_s": OUTAGE_S, "grace_s": GRACE_S, "bound_s": BOUND_S,
              "pre_s": opts.pick(0.5, 1.0), "post_s": post, "variants": OPTIONS,
              "blips": list(BLIPS), "orders": raw["orders"], "sets": raw["writes"]["sets"],
              "set_block": BLOCK}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds={"blips": raw["blips"], "writes": raw["writes"]["rounds"]},
                    tables=tables(figures, post), goals=goals(figures), chart=chart(figures))


def main() -> None:
    h.cli(h.parser("python -m benchmarks.replay", child="--worker"), ROUNDS, run, child=worker)


if __name__ == "__main__":
    main()
