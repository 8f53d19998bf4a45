"""8. L1 hit ratio: how many requests each eviction policy serves from memory, same traces.

Every policy replays the same request traces at the same capacity (20% of the keys, the
fleet benchmark's 2,000 of 10,000), and the figure is the fraction of requests it served
without going to L2. The traces come from documented generators, seeded, so every run
replays the same requests:

* ``zipf S / N keys``: independent requests, key of popularity rank r drawn with weight
  1/r^S (S = 0.8, 1.0, 1.1 (the fleet benchmark's mix), 1.2), ranks shuffled over the key
  names; 40 requests per key (20 at 100,000 keys).
* ``scan``: zipf 1.0 with a one-off sweep over 5 x capacity cold keys in the middle; the
  figure is the hit ratio of the 50,000 requests after the sweep, next to the same requests
  without it (the cost of the sweep to the hot set).
* ``loop``: the keys 0..1.5 x capacity read in order, again and again (LRU and FIFO keep
  nothing useful; a frequency policy keeps a fixed part).
* ``shift``: zipf 1.0 whose popularity is reshuffled halfway (a policy's memory must fade).

No real-world trace is reachable here: libcachesim's loaders fetch theirs from S3, and no
package on PyPI ships one; the generators are the ones the literature uses for these shapes.

Policies: fleetcache's L1 replayed through ``LocalStore`` (the same code ``FleetCache.get``
runs) and, on the 10,000-key traces, through the real ``FleetCache.get`` on a private
server (every L1 miss an L2 GET: the two must agree); theine (W-TinyLFU, Caffeine's
policy, in Rust); cachetools LRUCache, LFUCache and FIFOCache (the floor); libcachesim's C
implementations of S3-FIFO, SIEVE, ARC, LIRS, CLOCK and W-TinyLFU, by the authors of S3-FIFO
and SIEVE (skipped if libcachesim is not installed); an exact-count LFU with the same
admission rule and unbounded memory (the bound of what counting can reach online); and the
static best: the ``capacity`` most requested keys of the whole trace, known in advance.

    python -m benchmarks.hit_ratio [--quick]
"""

from __future__ import annotations

# ruff: noqa: PLC0415 - optional peers are imported where they run
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from itertools import islice
from typing import Any

from . import harness as h

NAME = "hit_ratio"
ROUNDS = (1, 1)  # (--quick, full): the traces are seeded, the replays deterministic
SHARE = 0.2  # capacity as a share of the keys
SCAN_WINDOW = 50_000
TTL = 3600.0

Trace = list[int]
Replay = Callable[[Trace, int], int]  # hits of a policy replaying a trace at a capacity


# -- traces -----------------------------------------------------------------------------------


def zipf(n_keys: int, s: float, n_requests: int, seed: int) -> Trace:
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1) ** s
    ranks = rng.choice(n_keys, size=n_requests, p=weights / weights.sum())
    return [int(k) for k in rng.permutation(n_keys)[ranks]]


def traces(opts: h.Options) -> dict[str, dict[str, Any]]:
    """name -> {"trace", "keys", "window" (start, end) the figure is read over, "real"}."""
    small = opts.pick(2_000, 10_000)
    large = opts.pick(10_000, 100_000)
    cap = int(small * SHARE)
    out: dict[str, dict[str, Any]] = {}
    for s in (0.8, 1.0, 1.1, 1.2):
        out[f"zipf {s} / {small:,} keys"] = {"trace": zipf(small, s, small * 40, seed=1),
                                            "keys": small, "real": True}
    for s in (0.8, 1.0, 1.2):
        out[f"zipf {s} / {large:,} keys"] = {"trace": zipf(large, s, large * 20, seed=2),
                                            "keys": large, "real": False}
    base = zipf(small, 1.0, small * 40, seed=3)
    mid = len(base) // 2
    sweep = [small + i for i in range(5 * cap)]  # keys never seen before or after
    window = min(SCAN_WINDOW, len(base) - mid)
    out["scan: zipf 1.0, no sweep"] = {"trace": base, "keys": small, "real": False,
                                       "window": (mid, mid + window)}
    out["scan: zipf 1.0, sweep 5x cap"] = {
        "trace": base[:mid] + sweep + base[mid:], "keys": small, "real": False,
        "window": (mid + len(sweep), mid + len(sweep) + window)}
    loop_keys = int(cap * 1.5)
    out["loop over 1.5x cap"] = {"trace": list(range(loop_keys)) * 30, "keys": small,
                                 "real": False}
    out["shift: zipf 1.0 reshuffled"] = {
        "trace": base[:mid] + zipf(small, 1.0, len(base) - mid, seed=4), "keys": small,
        "real": False, "window": (mid, len(base))}
    return out


# -- policies ---------------------------------------------------------------------------------


def fleetcache_l1(trace: Trace, cap: int) -> int:
    """The read path's L1 moves, without Redis: a hit is ``get``, a miss promotes."""
    from fleetcache.core.l1 import LocalStore

    store = LocalStore(cap)
    get, promote = store.get, store.store_if_unchanged
    hits = 0
    for key in map(str, trace):
        if get(key) is not None:
            hits += 1
        else:
            promote(key, 1, TTL, store.seq)
    return hits


def mapping_policy(make: Callable[[int], Any]) -> Replay:
    """A cachetools-style mapping: a hit is ``in``, a miss stores."""

    def replay(trace: Trace, cap: int) -> int:
        cache = make(cap)
        hits = 0
        for key in trace:
            if cache.get(key) is not None:
                hits += 1
            else:
                cache[key] = 1
        return hits

    return replay


def theine_policy(trace: Trace, cap: int) -> int:
    import theine

    cache: Any = theine.Cache(cap)
    hits = 0
    for key in trace:
        if cache.get(key)[1]:
            hits += 1
        else:
            cache.set(key, 1)
    return hits


def libcachesim_policy(name: str) -> Replay:
    def replay(trace: Trace, cap: int) -> int:
        import libcachesim

        cache = getattr(libcachesim, name)(cap)
        request = libcachesim.Request()
        request.obj_size = 1
        hits = 0
        for key in trace:
            request.obj_id = key
            hits += cache.get(request)
        return hits

    return replay


def exact_lfu(trace: Trace, cap: int) -> int:
    """fleetcache's admission and sampled eviction over exact, never-aged counts of every
    key ever seen: the bound of what counting alone can reach online."""
    counts: Counter[int] = Counter()
    resident: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for key in trace:
        counts[key] += 1
        if key in resident:
            hits += 1
            continue
        if len(resident) < cap:
            resident[key] = None
            continue
        sampled = list(islice(resident, 5))
        victim = min(sampled, key=counts.__getitem__)
        for other in sampled:
            resident.move_to_end(other)
        if counts[key] > counts[victim]:
            del resident[victim]
            resident[key] = None
    return hits


def static_best(trace: Trace, cap: int) -> int:
    return sum(n for _, n in Counter(trace).most_common(cap))


def policies() -> dict[str, Replay]:
    import cachetools

    out: dict[str, Replay] = {
        "fleetcache L1": fleetcache_l1,
        "theine (W-TinyLFU)": theine_policy,
        "cachetools LFUCache": mapping_policy(cachetools.LFUCache),
        "cachetools LRUCache": mapping_policy(cachetools.LRUCache),
        "cachetools FIFOCache": mapping_policy(cachetools.FIFOCache),
    }
    try:
        import libcachesim  # noqa: F401 - only whether it is there
    except ImportError:
        print("libcachesim not installed: its policies are skipped", flush=True)
    else:
        for name, label in (("S3FIFO", "S3-FIFO"), ("Sieve", "SIEVE"), ("ARC", "ARC"),
                            ("LIRS", "LIRS"), ("Clock", "CLOCK"), ("WTinyLFU", "W-TinyLFU")):
            out[f"libcachesim {label}"] = libcachesim_policy(name)
    out["exact-count LFU (bound)"] = exact_lfu
    out["static best (oracle)"] = static_best
    return out


# -- the real read path -----------------------------------------------------------------------


def through_fleetcache(url: str, trace: Trace, n_keys: int, cap: int) -> int:
    """L1 hits of the real ``FleetCache.get`` replaying ``trace`` (L2 holds every key)."""
    from fleetcache import FleetCache

    ns = f"hr{time.monotonic_ns()}"
    with FleetCache(url=url, namespace=ns, l1_capacity=1) as writer:
        for start in range(0, n_keys, 1000):
            writer.set_many({str(k): 1 for k in range(start, min(n_keys, start + 1000))},
                            ttl=TTL)
    with FleetCache(url=url, namespace=ns, l1_capacity=cap, l1_ttl=TTL) as reader:
        reader.connect(wait=5)
        get = reader.get
        for key in map(str, trace):
            get(key)
        stats = reader.stats()
        assert stats.misses == 0, "every key is in L2"
        return stats.l1_hits


# -- measuring and reporting ------------------------------------------------------------------


def windowed(replay: Replay, trace: Trace, cap: int, window: tuple[int, int] | None) -> float:
    """Hit ratio over ``window`` of the trace (the whole trace without one)."""
    if window is None:
        return replay(trace, cap) / len(trace)
    start, end = window
    if replay is static_best:  # an oracle of the window itself
        return static_best(trace[start:end], cap) / (end - start)
    return (replay(trace[:end], cap) - replay(trace[:start], cap)) / (end - start)


def measure(opts: h.Options, url: str) -> dict[str, Any]:
    figures: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    lengths: dict[str, int] = {}
    for tname, spec in traces(opts).items():
        lengths[tname] = len(spec["trace"])
        trace, cap = spec["trace"], int(spec["keys"] * SHARE)
        row: dict[str, float] = {}
        took: dict[str, float] = {}
        for pname, replay in policies().items():
            t0 = time.monotonic()
            row[pname] = windowed(replay, trace, cap, spec.get("window"))
            took[pname] = time.monotonic() - t0
        if spec["real"]:
            t0 = time.monotonic()
            row["fleetcache FleetCache.get (real)"] = (
                through_fleetcache(url, trace, spec["keys"], cap) / len(trace))
            took["fleetcache FleetCache.get (real)"] = time.monotonic() - t0
        figures[tname] = row
        seconds[tname] = took
        best = row["static best (oracle)"]
        print(f"  {tname}: fleetcache {row['fleetcache L1']:.4f}, theine "
              f"{row['theine (W-TinyLFU)']:.4f}, static best {best:.4f}", flush=True)
    return {"figures": figures, "seconds": seconds, "lengths": lengths}


def tables(figures: dict[str, dict[str, float]]) -> list[h.Table]:
    names = list(figures)
    peers = list(next(iter(figures.values())))  # the first trace ran the real path too
    main = h.Table("L1 hit ratio at capacity = 20% of the keys (share of requests served "
                   "from L1; x static best)", ["policy", *names])
    for p in peers:
        cells = []
        for n in names:
            v = figures[n].get(p)
            best = figures[n]["static best (oracle)"]
            cells.append("-" if v is None else f"{v:.4f} ({v / best:.3f}x)")
        main.add(p, *cells)
    main.note = ("scan rows: the 50,000 requests after the sweep (or the same requests "
                 "without it); shift: the half after the reshuffle; static best there is the "
                 "oracle of that window.")
    return [main]


def goals(figures: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    out = []
    for name, row in figures.items():
        if not name.startswith("zipf"):
            continue
        fc, best, peer = row["fleetcache L1"], row["static best (oracle)"], \
            row["theine (W-TinyLFU)"]
        out.append(h.goal(f"{name}: hit ratio >= theine's W-TinyLFU (ratio)", fc / peer,
                          ">= 1", fc >= peer, f"{fc:.4f} vs {peer:.4f}"))
        out.append(h.goal(f"{name}: hit ratio >= 0.98x the static best", fc / best,
                          ">= 0.98", fc / best >= 0.98,
                          f"exact-count LFU bound {row['exact-count LFU (bound)'] / best:.3f}x"))
        real = row.get("fleetcache FleetCache.get (real)")
        if real is not None:
            out.append(h.goal(f"{name}: FleetCache.get agrees with the LocalStore replay "
                              "(points)", abs(real - fc) * 100, "<= 0.5",
                              abs(real - fc) * 100 <= 0.5))
    plain = figures["scan: zipf 1.0, no sweep"]["fleetcache L1"]
    swept = figures["scan: zipf 1.0, sweep 5x cap"]["fleetcache L1"]
    out.append(h.goal("scan: a 5x-capacity sweep costs the hot set < 5 points",
                      (plain - swept) * 100, "< 5", (plain - swept) * 100 < 5))
    return out


def chart(figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    names = [n for n in figures if n.startswith("zipf")]
    shown = [p for p in figures[names[0]]
             if p not in ("static best (oracle)", "cachetools LFUCache")]
    return {"title": "L1 hit ratio at 20% capacity, x the static best", "panels": [{
        "title": "share of the static best's hits (1.0 = the oracle)", "unit": "x static",
        "log": False, "categories": names,
        "series": [{"label": p, "values": [
            figures[n][p] / figures[n]["static best (oracle)"] if p in figures[n] else None
            for n in names]} for p in shown],
        "hline": {"y": 0.98, "label": "goal: 0.98x"},
    }]}


def run(opts: h.Options) -> dict[str, Any]:
    raw, version, started = h.on_server(lambda server: measure(opts, server.url))
    figures = raw["figures"]
    params = {"capacity_share": SHARE, "scan_window": SCAN_WINDOW,
              "trace_lengths": raw["lengths"]}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=[raw["seconds"]], tables=tables(figures), goals=goals(figures),
                    chart=chart(figures))


def main() -> None:
    h.cli(h.parser("python -m benchmarks.hit_ratio"), ROUNDS, run)


if __name__ == "__main__":
    main()
