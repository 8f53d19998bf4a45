"""5. Invalidation delay: one writer, 4 reader processes holding the key in their L1.

The writer (this process) changes one key at a fixed rate (10, 1,000 and 10,000 per second)
with ``set`` (value ``{"v": i}``), or alternates ``delete`` and ``set``, or writes it with
9 other keys in one ``set_many`` 1,000 times a second (10,000 invalidations a second).
Each reader is a ``python -m benchmarks.invalidation --reader`` child polling
``cache.get(key)`` every ``POLL_US`` microseconds (sleeping in between, as a worker between
requests would) and noting when the value changed, until the writer says stop (``TAIL_S``
after its last op). The target rate is a ceiling: one writer's synchronous ``set`` (a script
round trip, serialized per key inside a process) caps what it can reach; the achieved rate
is reported.
CLOCK_MONOTONIC is system-wide on Linux, so the writer's "my call returned" and the
readers' "I saw it" compare directly.

* delay of op i, per reader: first time the reader saw op i's state or a later one, minus
  the moment the writer's call for op i returned (the polling interval is included: it is
  the resolution of the measurement). A reader can see a value before the writer's
  reply arrives: such delays count as 0 and are counted apart.
* deletes: only the delete ops are invalidations of an L1-resident value (after a delete a
  reader misses, so the next set is simply read from Redis); set ops of that mode are not
  in its delay figures. "Absent" looks the same after every delete, so a reader that never
  saw the set between two deletes has its second delete timed until the next set; the
  sequence always ends on a set, so "lost" stays exact.
* lost: an op whose state (or a later one) a reader never saw before the run's end, plus
  notices: each reader's ``stats().invalidations_received`` must reach the ops sent.
* regressions: a reader seeing an older state after a newer one (a stale read).

    python -m benchmarks.invalidation [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - fleetcache is imported in the process that uses it
import argparse
import os
import select
import sys
import time
import uuid
from typing import Any

from . import harness as h

NAME = "invalidation"
ROUNDS = (1, 5)  # (--quick, full)
READERS = 4
POLL_US = 200
TAIL_S = 0.3
BATCH = 10  # keys per set_many call in the batched phase


# -- reader process ---------------------------------------------------------------------------


class _Lines:
    """Lines from stdin through os.read: select() on the fd stays truthful (no readahead)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.buf = b""

    def ready(self, timeout: float) -> bool:
        return b"\n" in self.buf or bool(select.select([self.fd], [], [], timeout)[0])

    def next(self) -> str:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return "exit"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode().strip()


def reader(args: argparse.Namespace) -> None:
    from fleetcache import FleetCache

    cache = FleetCache.from_url(args.url, namespace=args.ns)
    cache.connect(wait=5)
    get, sleep, now = cache.get, time.sleep, time.monotonic
    poll = args.poll_us / 1e6
    lines = _Lines()
    h.say("ready")
    while True:
        cmd, _, key = lines.next().partition(" ")
        if cmd == "exit":
            break
        if cmd == "prep":  # read the key until it is in L1
            deadline = now() + 5
            while get(key) is None and now() < deadline:
                sleep(0.001)
            get(key)
            h.say("ready")
        elif cmd == "run":  # poll until the writer says "stop" (select() is the sleep)
            before = cache.stats()
            obs: list[tuple[float, int]] = []
            last: Any = object()
            last_state = -2
            while True:
                value = get(key)
                t = now()
                if value is not last:
                    last = value
                    state = -1 if value is None else value["v"]
                    if state != last_state:
                        obs.append((t, state))
                        last_state = state
                if lines.ready(poll):
                    break
            assert lines.next() == "stop"
            after = cache.stats()
            h.say({"obs": obs, "pid": os.getpid(),
                   "received": after.invalidations_received - before.invalidations_received,
                   "reconnects": after.reconnects - before.reconnects,
                   "l1_hits": after.l1_hits - before.l1_hits,
                   "l2_hits": after.l2_hits - before.l2_hits,
                   "misses": after.misses - before.misses})
    cache.close()


# -- writer (the parent) ----------------------------------------------------------------------


def _phases(opts: h.Options) -> list[dict[str, Any]]:
    return [
        {"kind": "set", "rate": 10, "seconds": opts.pick(1.0, 5.0)},
        {"kind": "set", "rate": 1000, "seconds": opts.pick(1.0, 3.0)},
        {"kind": "set", "rate": 10_000, "seconds": opts.pick(0.5, 2.0)},
        {"kind": "delete", "rate": 10, "seconds": opts.pick(1.0, 5.0)},
        {"kind": "delete", "rate": 1000, "seconds": opts.pick(0.5, 2.0)},
        {"kind": f"set_many({BATCH})", "rate": 1000, "seconds": opts.pick(0.5, 2.0)},
    ]


def _write(cache: Any, key: str, kind: str, rate: float, seconds: float) -> list[float]:
    """Ops 1..N paced at ``rate`` (never faster) for ``seconds`` at most (a writer slower
    than the rate does fewer ops); returns when each call returned (index 0 unused)."""
    n = max(1, int(rate * seconds))
    returned = [0.0]
    t0 = time.monotonic()
    end = t0 + seconds
    for i in range(1, n + 1):
        if i > 2 and time.monotonic() > end:
            break
        delay = t0 + (i - 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == "delete" and i % 2 == 1:
            cache.delete(key)
        elif kind.startswith("set_many"):
            cache.set_many({key: {"v": i}, **{f"{key}:{j}": {"v": i} for j in range(1, BATCH)}},
                           ttl=60)
        else:
            cache.set(key, {"v": i}, ttl=60)
        returned.append(time.monotonic())
    if kind == "delete" and len(returned) % 2 == 0:
        # End on a set: "absent" looks the same after every delete, so a reader that missed
        # the set between two deletes could not be told apart from one that lost a notice.
        cache.set(key, {"v": len(returned)}, ttl=60)
        returned.append(time.monotonic())
    return returned


def _states(obs: list[list[float]], kind: str) -> list[tuple[float, int]]:
    """Observations as (time, op index reached); None after a set of op j is op j + 1."""
    out = []
    last_set = 0
    for t, state in obs:
        if state == -1:
            out.append((t, last_set + 1 if kind == "delete" else last_set))
        else:
            last_set = int(state)
            out.append((t, int(state)))
    return out


def _analyse(kind: str, returned: list[float], replies: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(returned) - 1
    delays: list[float] = []
    early = lost = regressions = 0
    for rep in replies:
        states = _states(rep["obs"], kind)
        best, seen_at = -1, []  # running max: first time each op (or later) was reached
        for t, s in states:
            if s < best:
                regressions += 1
            elif s > best:
                seen_at.append((s, t))
                best = s
        j = 0
        for i in range(1, n + 1):
            while j < len(seen_at) and seen_at[j][0] < i:
                j += 1
            if j == len(seen_at):
                lost += 1
                continue
            if kind == "delete" and i % 2 == 0:
                continue  # a set after a delete: read from Redis, not an invalidation
            d = seen_at[j][1] - returned[i]
            if d < 0:
                early += 1
                d = 0.0
            delays.append(d * 1000)
    # ">=": the notice of the set that made the key (before the run) may still be in flight
    # when a reader has already read the value from Redis; it then lands in the run.
    per_op = BATCH if kind.startswith("set_many") else 1  # keys each op invalidates
    notices_ok = all(rep["received"] >= n * per_op for rep in replies)
    return {
        "ops": n,
        "achieved_rate": (n - 1) / max(1e-9, returned[n] - returned[1]) if n > 1 else None,
        "delay_ms": h.pcts(delays),
        "seen_before_return": early,
        "lost": lost,
        "regressions": regressions,
        "notices_received": [rep["received"] for rep in replies],
        "notices_all_received": notices_ok,
        "reconnects": sum(rep["reconnects"] for rep in replies),
    }


def measure(opts: h.Options, url: str) -> dict[str, Any]:
    from fleetcache import FleetCache

    ns = f"inv-{os.getpid()}"
    cache = FleetCache.from_url(url, namespace=ns)
    cache.connect(wait=5)
    kids = [h.Child("benchmarks.invalidation", "--reader", "--url", url, "--ns", ns,
                    "--poll-us", str(POLL_US)) for _ in range(READERS)]
    phases = _phases(opts)
    results: dict[str, list[dict[str, Any]]] = {f"{p['kind']} @ {p['rate']}/s": []
                                                 for p in phases}
    try:
        for k in kids:
            assert k.recv(60) == "ready"
        for _ in range(opts.rounds):
            for p in phases:
                key = f"inv:{uuid.uuid4().hex[:12]}"
                cache.set(key, {"v": 0}, ttl=60)
                for k in kids:
                    k.send(f"prep {key}")
                for k in kids:
                    assert k.recv(30) == "ready"
                for k in kids:
                    k.send(f"run {key}")
                time.sleep(0.05)
                returned = _write(cache, key, p["kind"], p["rate"], p["seconds"])
                time.sleep(TAIL_S)  # the last notices' time to arrive; then stop the readers
                for k in kids:
                    k.send("stop")
                replies = [k.recv_json(60 + p["seconds"]) for k in kids]
                results[f"{p['kind']} @ {p['rate']}/s"].append(
                    _analyse(p["kind"], returned, replies))
    finally:
        for k in kids:
            k.close()
        cache.close()
    return {"rounds": results, "phases": phases}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    figures = {}
    for name, rounds in raw["rounds"].items():
        figures[name] = {
            "delay_ms": h.median_rounds([r["delay_ms"] for r in rounds]),
            "achieved_rate": h.median(r["achieved_rate"] for r in rounds
                                      if r["achieved_rate"] is not None),
            "ops": sum(r["ops"] for r in rounds),
            "lost": sum(r["lost"] for r in rounds),
            "regressions": sum(r["regressions"] for r in rounds),
            "seen_before_return": sum(r["seen_before_return"] for r in rounds),
            "notices_all_received": all(r["notices_all_received"] for r in rounds),
            "reconnects": sum(r["reconnects"] for r in rounds),
        }
    return figures


def tables(figures: dict[str, Any]) -> list[h.Table]:
    t = h.Table(f"Invalidation delay: writer's call returned -> each of {READERS} readers sees "
                "it (ms)",
                ["op @ target rate", "achieved/s", "p50", "p90", "p99", "max", "ops",
                 "lost", "stale", "notices ok", "early"],
                note=(f"readers poll every {POLL_US} us (the resolution); median over rounds; "
                      "early = seen before the writer's call returned (counted as 0); "
                      "stale = a reader went back to an older state; achieved/s counts calls "
                      f"(a set_many call invalidates {BATCH} keys)."))
    for name, fig in figures.items():
        d = fig["delay_ms"]
        t.add(name, fig["achieved_rate"], d["p50"], d["p90"], d["p99"], d["max"], fig["ops"],
              fig["lost"], fig["regressions"], "yes" if fig["notices_all_received"] else "NO",
              fig["seen_before_return"])
    return [t]


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    k = figures["set @ 1000/s"]
    many = figures[f"set_many({BATCH}) @ 1000/s"]
    batched = (many["achieved_rate"] or 0) * BATCH
    lost = sum(f["lost"] for f in figures.values())
    notices = all(f["notices_all_received"] for f in figures.values())
    return [
        h.goal("p99 invalidation delay < 5 ms at 1,000/s (loopback)", k["delay_ms"]["p99"],
               "< 5 ms", k["delay_ms"]["p99"] < 5),
        h.goal("zero lost invalidations (every rate)", lost, "0", lost == 0 and notices,
               "every reader received every notice" if notices else
               "some reader missed notices"),
        h.goal("zero stale regressions", sum(f["regressions"] for f in figures.values()), "0",
               all(f["regressions"] == 0 for f in figures.values())),
        h.goal(f"10,000 invalidations/s from one writer (set_many of {BATCH} keys, "
               "informative)", batched, ">= 10000", batched >= 10_000,
               f"p99 delay {many['delay_ms']['p99']:.2f} ms"),
    ]


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    names = list(figures)
    return {"title": f"Invalidation delay to {READERS} reader processes", "panels": [{
        "title": "ms from the writer's return to a reader's get (bar p50, whisker p99)",
        "unit": "ms", "log": True, "categories": names,
        "series": [{"label": "p50", "values": [figures[n]["delay_ms"]["p50"] for n in names],
                    "upper": [figures[n]["delay_ms"]["p99"] for n in names]}],
        "hline": {"y": 5, "label": "goal at 1,000/s: p99 < 5 ms"},
    }]}


def run(opts: h.Options) -> dict[str, Any]:
    raw, version, started = h.on_server(lambda server: measure(opts, server.url))
    figures = summarize(raw)
    params = {"readers": READERS, "poll_us": POLL_US, "tail_s": TAIL_S,
              "phases": raw["phases"]}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=raw["rounds"], tables=tables(figures), goals=goals(figures),
                    chart=chart(figures))


def main() -> None:
    parser = h.parser("python -m benchmarks.invalidation", child="--reader")
    parser.add_argument("--poll-us", type=int, default=POLL_US, help=argparse.SUPPRESS)
    h.cli(parser, ROUNDS, run, child=reader)


if __name__ == "__main__":
    main()
