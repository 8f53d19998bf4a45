"""7. Memory: RSS of one worker process holding 100,000 L1 entries of ~200-byte values.

Each peer runs in a fresh ``python -m benchmarks.memory --child`` process (as a worker
would): RSS is read after its imports and connections (baseline), then after 100,000
entries are in (gc collected both times); the delta is the figure. fleetcache's L1 is filled
the way a worker fills it, by reads: ``get_many`` of 1,000 keys at a time from Redis, where
this process stored the values first (in fleetcache's own format). The other peers get the
same values decoded by msgspec from the same MessagePack bytes, so every peer holds objects
of the same shape. Peers: a plain dict (the floor), cachetools.TTLCache and LRUCache, and
theine (W-TinyLFU, entries stored with the same TTL). fleetcache's figure includes its
frequency sketch (16 one-byte counters per entry of capacity).

    python -m benchmarks.memory [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - each child imports only its peer: the RSS baseline
import argparse
import gc
import json
import os
import time
from typing import Any

from . import harness as h

NAME = "memory"
ROUNDS = (1, 3)  # (--quick, full)
ENTRIES = 100_000
TTL = 3600
PEERS = ("dict (floor)", "fleetcache L1", "cachetools TTLCache", "cachetools LRUCache",
         "theine Cache")


def make_value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"Product {i}", "price": 10.5 + i, "in_stock": True,
            "tags": ["red", "large"], "description": f"{i:08d}" + "x" * 120}


def _key(i: int) -> str:
    return f"item:{i}"


# -- child ------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import msgspec

    n = args.entries
    enc, dec = msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder().decode
    store: Any
    if args.peer == "fleetcache L1":
        from fleetcache import FleetCache

        cache = FleetCache.from_url(args.url, namespace=args.ns, l1_capacity=n + 1000)
        cache.connect(wait=5)
        cache.get_many([_key(i) for i in range(10)])  # the pool's connection is open
        gc.collect()
        before = h.rss_bytes()
        for start in range(0, n, 1000):
            cache.get_many([_key(i) for i in range(start, min(n, start + 1000))])
        held = cache.health().l1_size
    elif args.peer == "theine Cache":
        import datetime

        import theine

        cache_: Any = theine.Cache(n + 1000)
        ttl = datetime.timedelta(seconds=TTL)
        gc.collect()
        before = h.rss_bytes()
        for i in range(n):
            cache_.set(_key(i), dec(enc(make_value(i))), ttl)
        held = len(cache_)
    else:
        import cachetools

        if args.peer == "dict (floor)":
            store = {}
        elif args.peer == "cachetools TTLCache":
            store = cachetools.TTLCache(maxsize=n + 1000, ttl=TTL)
        else:
            store = cachetools.LRUCache(maxsize=n + 1000)
        gc.collect()
        before = h.rss_bytes()
        for i in range(n):
            store[_key(i)] = dec(enc(make_value(i)))
        held = len(store)
    gc.collect()
    after = h.rss_bytes()
    h.say({"before": before, "after": after, "held": held})


# -- parent -----------------------------------------------------------------------------------


def _fill_redis(url: str, ns: str, n: int) -> int:
    """The values in fleetcache's format (its codec), 1,000 SETs per pipeline."""
    import redis

    from fleetcache.core.codec import Codec

    codec = Codec(16 * 1024 * 1024)
    r = redis.Redis.from_url(url)
    expires = int((time.time() + TTL) * 1000)
    size = 0
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            blob = codec.encode(_key(i), make_value(i), expires)
            size += len(blob)
            pipe.set(f"{ns}:v:{_key(i)}", blob, px=TTL * 1000)
        pipe.execute()
    r.close()
    return size // n


def measure(opts: h.Options, url: str) -> dict[str, Any]:
    ns = f"mem-{os.getpid()}"
    value_bytes = _fill_redis(url, ns, ENTRIES)
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(opts.rounds):
        rd = {}
        for peer in PEERS[r % len(PEERS):] + PEERS[:r % len(PEERS)]:
            kid = h.Child("benchmarks.memory", "--child", "--peer", peer, "--url", url,
                          "--ns", ns, "--entries", str(ENTRIES))
            try:
                res = kid.recv_json(120)
            finally:
                kid.close()
            assert res["held"] == ENTRIES, f"{peer} holds {res['held']} entries"
            rd[peer] = {"rss_before_mib": res["before"] / 2**20,
                        "rss_after_mib": res["after"] / 2**20,
                        "delta_mib": (res["after"] - res["before"]) / 2**20,
                        "bytes_per_entry": (res["after"] - res["before"]) / ENTRIES}
        rounds.append(rd)
    return {"rounds": rounds, "value_bytes": value_bytes}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    rounds = raw["rounds"]
    figures = {}
    for peer in PEERS:
        figures[peer] = {k: h.median(rd[peer][k] for rd in rounds) for k in rounds[0][peer]}
        figures[peer]["ratio_to_ttlcache"] = h.median(
            rd[peer]["delta_mib"] / rd["cachetools TTLCache"]["delta_mib"] for rd in rounds)
        figures[peer]["ratio_to_dict"] = h.median(
            rd[peer]["delta_mib"] / rd["dict (floor)"]["delta_mib"] for rd in rounds)
    return figures


def tables(figures: dict[str, Any], value_bytes: int) -> list[h.Table]:
    t = h.Table(f"Memory: RSS of one process with {ENTRIES:,} entries "
                f"(~{value_bytes} encoded bytes each)",
                ["peer", "RSS before MiB", "RSS after MiB", "delta MiB", "bytes/entry",
                 "x TTLCache", "x dict"],
                note="median over rounds; fresh process per peer and round; gc collected.")
    for peer, fig in figures.items():
        t.add(peer, fig["rss_before_mib"], fig["rss_after_mib"], fig["delta_mib"],
              fig["bytes_per_entry"], h.fmt_ratio(fig["ratio_to_ttlcache"]),
              h.fmt_ratio(fig["ratio_to_dict"]))
    return [t]


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    names = list(figures)
    return {"title": f"RSS growth for {ENTRIES:,} cached entries", "panels": [{
        "title": "MiB added to the process (median of rounds)", "unit": "MiB", "log": False,
        "categories": names,
        "series": [{"label": "delta RSS", "values": [figures[n]["delta_mib"] for n in names]}],
    }]}


def run(opts: h.Options) -> dict[str, Any]:
    raw, version, started = h.on_server(lambda server: measure(opts, server.url))
    figures = summarize(raw)
    fc = figures["fleetcache L1"]
    gls = [h.goal("fleetcache L1: RSS growth per entry <= 1.2x cachetools.TTLCache's",
                  fc["ratio_to_ttlcache"], "<= 1.2", fc["ratio_to_ttlcache"] <= 1.2,
                  f"theine {figures['theine Cache']['ratio_to_ttlcache']:.2f}x")]
    params = {"entries": ENTRIES, "encoded_value_bytes": raw["value_bytes"],
              "value_json_bytes": len(json.dumps(make_value(0)))}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=raw["rounds"], tables=tables(figures, raw["value_bytes"]),
                    goals=gls, chart=chart(figures))


def main() -> None:
    parser = h.parser("python -m benchmarks.memory", child="--child")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--entries", type=int, default=ENTRIES, help=argparse.SUPPRESS)
    h.cli(parser, ROUNDS, run, child=child)


if __name__ == "__main__":
    main()
