"""11. Tags and prefixes: dropping 10,000 keys from Redis and from every worker's L1.

One writer (this process) stores 10,000 keys carrying the tag ``big`` (``set_many(...,
tags=["big"])``, 1,000 per call) next to 10,000 untagged ones; 4 reader processes each hold
2,000 of the tagged keys in L1. Then, in rotated order each round, one of:

* ``invalidate_tag("big")``: SSCAN over the tag's set in batches of 500, one notice before
  and one after (each reader finds its keys through its tag index);
* ``delete_prefix("t:")``: the same keys by prefix, SCAN MATCH over the namespace;
* ``delete_many`` of the 10,000 keys, 500 per call (what an application without tags does
  when it knows the keys): one notice naming 500 keys per call.

Reported: the call's latency; the time until the last reader no longer serves its keys
(each polls one of them, a ``get`` that turns into a miss once the notice is applied);
PUBLISH commands and bytes published (INFO commandstats, and the notices' sizes as sent);
every reader's L1 left holding none of the keys. CLOCK_MONOTONIC is system-wide, so the
writer's start and the readers' "gone" compare directly.

    python -m benchmarks.tags [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - fleetcache is imported in the process that uses it
import multiprocessing as mp
import time
import uuid
from typing import Any

from . import harness as h

NAME = "tags"
ROUNDS = (1, 5)  # (--quick, full)
KEYS = 10_000
READERS = 4
HELD = 2_000  # tagged keys each reader holds in L1
BATCH = 500
VARIANTS = ("invalidate_tag", "delete_prefix", "delete_many")
LABELS = {"invalidate_tag": 'invalidate_tag("big")', "delete_prefix": 'delete_prefix("t:")',
          "delete_many": f"delete_many, {BATCH} keys per call"}
CTX = mp.get_context("fork")
ABSENT = "<absent>"


def _reader(url: str, ns: str, idx: int, sync: tuple[Any, Any, Any]) -> None:
    """Hold this reader's share of the tagged keys; on ``go``, poll one of them until it
    stops being served; report when, and how many of the held keys L1 still has."""
    from fleetcache import FleetCache
    from fleetcache.testing import l1_entry

    # Room for every key it holds: what is measured is dropping them, not admission.
    cache = FleetCache.from_url(url, namespace=ns, stats_interval=0, l1_capacity=2 * HELD)
    cache.connect(wait=10)
    held = [f"t:{i}" for i in range(idx * HELD, (idx + 1) * HELD)]
    probe = held[-1]
    ready, go, out = sync  # Queue: held count, Event: drop now, Queue: (gone at, still held)
    while True:
        for _ in range(3):  # a promotion racing the refill's notices is refused: again
            for key in held:
                cache.get(key)
        ready.put(sum(l1_entry(cache, k) is not None for k in held))
        if not go.wait(120):
            return
        while cache.get(probe, ABSENT) != ABSENT:
            time.sleep(0.0002)
        gone_at = time.monotonic()
        time.sleep(0.05)  # the second notice (after the deletes) lands too
        out.put((gone_at, sum(l1_entry(cache, k) is not None for k in held)))
        while go.is_set():
            time.sleep(0.001)


def _fill(cache: Any) -> None:
    for start in range(0, KEYS, 1000):
        cache.set_many({f"t:{i}": {"i": i} for i in range(start, start + 1000)}, tags=["big"])
        cache.set_many({f"u:{i}": {"i": i} for i in range(start, start + 1000)})


def _drop(cache: Any, variant: str) -> int:
    if variant == "invalidate_tag":
        return int(cache.invalidate_tag("big"))
    if variant == "delete_prefix":
        return int(cache.delete_prefix("t:"))
    keys = [f"t:{i}" for i in range(KEYS)]
    return sum(cache.delete_many(keys[i:i + BATCH]) for i in range(0, KEYS, BATCH))


def measure(opts: h.Options, server: h.Server) -> list[dict[str, Any]]:
    from fleetcache import FleetCache

    ns = "tags" + uuid.uuid4().hex[:8]
    writer = FleetCache.from_url(server.url, namespace=ns, stats_interval=0)
    assert writer.connect(wait=10)
    _fill(writer)
    ready, out, go = CTX.Queue(), CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=_reader, args=(server.url, ns, i, (ready, go, out)), daemon=True)
             for i in range(READERS)]
    for p in procs:
        p.start()
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(opts.rounds):
            rd: dict[str, Any] = {}
            for variant in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
                held = [ready.get(timeout=60) for _ in procs]
                before = server.commandstats()
                start = time.monotonic()
                go.set()
                deleted = _drop(writer, variant)
                took = time.monotonic() - start
                after = server.commandstats()
                gone = [out.get(timeout=60) for _ in procs]
                delta = h.command_delta(before, after)
                rd[variant] = {
                    "deleted": deleted, "call_ms": took * 1000,
                    "last_reader_ms": (max(t for t, _ in gone) - start) * 1000,
                    "held_before": sum(held), "held_after": sum(n for _, n in gone),
                    "publishes": delta.get("publish", 0),  # made inside the scripts
                    "commands": delta,
                }
                print(f"  tags round {r + 1}: {LABELS[variant]}: {took * 1000:.1f} ms, "
                      f"last reader {rd[variant]['last_reader_ms']:.1f} ms", flush=True)
                _fill(writer)  # before the readers warm up again
                go.clear()
            rounds.append(rd)
        for _ in procs:
            ready.get(timeout=60)
    finally:
        go.set()
        for p in procs:
            p.kill()
            p.join(5)
        writer.close()
    return rounds


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for v in VARIANTS:
        rs = [rd[v] for rd in rounds]
        figures[v] = {
            "call_ms": h.median(r["call_ms"] for r in rs),
            "last_reader_ms": h.median(r["last_reader_ms"] for r in rs),
            "publishes": h.median(r["publishes"] for r in rs),
            "deleted": min(r["deleted"] for r in rs),
            "held_before": min(r["held_before"] for r in rs),
            "held_after": max(r["held_after"] for r in rs),
        }
        figures[v]["call_ratio_to_delete_many"] = h.median(
            rd[v]["call_ms"] / rd["delete_many"]["call_ms"] for rd in rounds)
    return figures


def tables(figures: dict[str, Any]) -> list[h.Table]:
    t = h.Table(f"Dropping {KEYS:,} keys from Redis and from {READERS} workers' L1 "
                f"({HELD:,} each), next to {KEYS:,} others",
                ["variant", "call ms", "x delete_many", "last worker ms", "PUBLISH",
                 "deleted", "L1 held before", "L1 held after"],
                note="median of rounds; 'last worker' = from the call's start until the last "
                     "reader stopped serving its probe key; PUBLISH = notices sent "
                     "(INFO commandstats).")
    for v in VARIANTS:
        f = figures[v]
        t.add(LABELS[v], f["call_ms"], h.fmt_ratio(f["call_ratio_to_delete_many"]),
              f["last_reader_ms"], f["publishes"], f["deleted"], f["held_before"],
              f["held_after"])
    return [t]


def goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    tag = figures["invalidate_tag"]
    out = [h.goal("invalidate_tag of 10,000 keys: every worker's L1 emptied of them",
                  tag["held_after"], "0", tag["held_after"] == 0 and tag["held_before"] > 0,
                  f"{tag['held_before']} held before"),
           h.goal("invalidate_tag: every key deleted from Redis", tag["deleted"],
                  f"{KEYS}", tag["deleted"] == KEYS),
           h.goal("invalidate_tag: O(1) notices, not one per key or batch",
                  tag["publishes"], "<= 2", tag["publishes"] <= 2),
           h.goal("invalidate_tag: call latency over 10,000 keys", tag["call_ms"],
                  "informative (ms)", None,
                  f"{tag['call_ratio_to_delete_many']:.2f}x delete_many's; last worker "
                  f"done {tag['last_reader_ms']:.1f} ms after the call began")]
    pre = figures["delete_prefix"]
    out.append(h.goal("delete_prefix: every key deleted, every worker's L1 emptied",
                      pre["held_after"], "0",
                      pre["held_after"] == 0 and pre["deleted"] == KEYS))
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    cats = [LABELS[v] for v in VARIANTS]
    return {"title": f"Dropping {KEYS:,} keys fleet-wide ({READERS} workers)", "panels": [
        {"title": "latency, ms (median of rounds)", "unit": "ms", "log": False,
         "categories": cats,
         "series": [{"label": "the call", "values": [figures[v]["call_ms"] for v in VARIANTS]},
                    {"label": "until the last worker stopped serving",
                     "values": [figures[v]["last_reader_ms"] for v in VARIANTS]}]},
        {"title": "notices published", "unit": "PUBLISH", "log": False, "categories": cats,
         "series": [{"label": "PUBLISH", "values": [figures[v]["publishes"]
                                                    for v in VARIANTS]}]},
    ]}


def run(opts: h.Options) -> dict[str, Any]:
    rounds, version, started = h.on_server(lambda server: measure(opts, server))
    figures = summarize(rounds)
    params = {"keys": KEYS, "readers": READERS, "held_per_reader": HELD, "batch": BATCH,
              "variants": list(VARIANTS)}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=rounds, tables=tables(figures), goals=goals(figures),
                    chart=chart(figures))


def main() -> None:
    h.cli(h.parser("python -m benchmarks.tags"), ROUNDS, run)


if __name__ == "__main__":
    main()
