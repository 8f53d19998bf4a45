"""L2 on a Redis Cluster: fleetcache's slot-following client against redis-py's RedisCluster.

A 3-primary cluster on loopback (:func:`benchmarks.sizing.cluster`). fleetcache runs on
``redis+cluster://`` with its L1 kept cold (capacity 1, 1,000 keys read round-robin: every
``get`` is a GET, a decode and a promotion), so the namespace lives in one slot and every
call is one round trip to that slot's primary (:mod:`fleetcache.redis.cluster`). The
peer is redis-py's ``RedisCluster`` on the same cluster: ``GET`` + ``msgspec`` decode and
``SET`` of keys on the same server, ``MGET`` of 100 keys in one slot (what fleetcache
sends) and ``mget_nonatomic`` of 100 keys spread over the three primaries (grouped by
slot, pipelined per node: what an application's spread keys cost) + 100 decodes. A plain
``redis.Redis`` on the slot's primary shows what routing costs.

Calls are timed one by one and interleaved across peers (see :mod:`benchmarks.l2_hit`);
ratios are per round, then the median.

    python -m benchmarks.cluster [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - peers are imported where measured
import time
from collections.abc import Callable
from typing import Any

from . import harness as h
from .l2_hit import VALUE, chart, run_cases, summarize, tables
from .sizing import cluster

NAME = "cluster"
ROUNDS = (3, 5)  # (--quick, full)
KEYS = 1000
BATCH = 100
TTL = 3600
NAMESPACE = "bench-cl"
PEER = "redis-py RedisCluster"
TITLES = {"get": "Cluster L2 hit: get with L1 cold (us per call)",
          "get_many": f"Cluster L2 hit: {BATCH} keys in one call (us per call)",
          "set": "Cluster write (us per call)"}


def _cases(port: int) -> tuple[dict[str, dict[str, Callable[[int], Any]]], list[Any]]:
    import msgspec
    import redis
    from redis.cluster import RedisCluster

    from fleetcache import FleetCache

    keys = [f"item:{i}" for i in range(KEYS)]
    fleet = FleetCache.from_url(f"redis+cluster://127.0.0.1:{port}", namespace=NAMESPACE,
                                l1_capacity=1)
    fleet.connect(wait=5)
    for k in keys:
        fleet.set(k, VALUE, ttl=TTL)
    rc: Any = RedisCluster(host="127.0.0.1", port=port)
    encode, decode = msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder().decode
    # The peer's keys on the same server as fleetcache's (the namespace's slot): one server
    # serves both, so the figures compare clients, not servers (interleaved calls to
    # different servers of a 2-core machine wake different processes). For get_many also
    # keys spread over every primary, as a RedisCluster application's keys are.
    same = [f"{{{NAMESPACE}}}:rc:{k}" for k in keys]
    spread = [f"bench-rc:{k}" for k in keys]
    blob = encode(VALUE)
    for k in same + spread:
        rc.set(k, blob, px=TTL * 1000)
    node = rc.get_node_from_key(same[0])
    direct = redis.Redis(host=node.host, port=node.port)  # the slot's primary, no routing
    n = len(keys)
    batches = [keys[i:i + BATCH] for i in range(0, n, BATCH)]
    same_batches = [same[i:i + BATCH] for i in range(0, n, BATCH)]
    spread_batches = [spread[i:i + BATCH] for i in range(0, n, BATCH)]
    nb = len(batches)
    cases: dict[str, dict[str, Callable[[int], Any]]] = {
        "get": {
            f"{PEER} GET + decode": lambda i: decode(rc.get(same[i % n])),
            "fleetcache get (L1 cold)": lambda i: fleet.get(keys[i % n]),
            "one server: redis.Redis GET + decode": lambda i: decode(direct.get(same[i % n])),
        },
        "get_many": {
            f"{PEER} mget_nonatomic({BATCH}) + decode, keys spread": lambda i: [
                decode(b) for b in rc.mget_nonatomic(spread_batches[i % nb])],
            f"fleetcache get_many({BATCH}) (L1 cold)": lambda i: fleet.get_many(
                batches[i % nb]),
            f"{PEER} MGET({BATCH}) + decode, keys in one slot": lambda i: [
                decode(b) for b in rc.mget(same_batches[i % nb])],
        },
        "set": {
            f"{PEER} SET of encoded bytes": lambda i: rc.set(same[i % n], blob,
                                                             px=TTL * 1000),
            "fleetcache set (SET+SPUBLISH script)": lambda i: fleet.set(keys[i % n], VALUE,
                                                                        ttl=TTL),
            "one server: redis.Redis SET": lambda i: direct.set(same[i % n], blob,
                                                                px=TTL * 1000),
        },
    }
    return cases, [fleet, rc, direct]


def measure(opts: h.Options, port: int) -> dict[str, Any]:
    cases, clients = _cases(port)
    raw = run_cases(opts, cases, clients[0])
    for client in clients:
        client.close()
    return raw


def goals(figures: dict[str, Any], checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reads only: a write also logs and publishes its notice (one script), which a bare
    SET does not, so its ratio is in the table, not judged."""
    cold = all(c["l1_hits"] == 0 and c["misses"] == 0 for c in checks)
    detail = "" if cold else "WARNING: some fleetcache calls were not L2 hits"
    out = []
    for op, name in (("get", "fleetcache get (L1 cold)"),
                     ("get_many", f"fleetcache get_many({BATCH}) (L1 cold)")):
        ratio = figures[op][name]["ratio_to_floor_p50"]
        out.append(h.goal(f"cluster {op}: fleetcache vs {PEER} (p50)", ratio, "<= 1.15",
                          ratio <= 1.15, detail))
    return out


def run(opts: h.Options) -> dict[str, Any]:
    started = time.monotonic()
    with cluster() as nodes:
        version = nodes[0].client.info("server")["redis_version"]
        raw = measure(opts, nodes[0].port)
    figures = summarize(raw)
    params = {"keys": KEYS, "batch": BATCH, "ttl_s": TTL, "n_ops": raw["n_ops"],
              "primaries": 3, "timer_ns": h.calibrate_timer()}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=raw["rounds"], tables=tables(figures, raw["n_ops"], TITLES, PEER),
                    goals=goals(figures, raw["checks"]),
                    chart=chart(figures, "L2 on a 3-primary Redis Cluster (loopback), single "
                                         "thread"),
                    extra={"cold_checks": raw["checks"]})


def main() -> None:
    h.cli(h.parser("python -m benchmarks.cluster"), ROUNDS, run)


if __name__ == "__main__":
    main()
