"""12. Where a loaded fleetcache worker spends its time: py-spy over the fleet benchmark.

The fleet benchmark's app (benchmarks/apps/fleet_app.py) with the fleetcache variant at
default settings, and with the dict memo (the ceiling: the same app, a dict for a cache),
each under the same load (warm-up, then the measured window), with py-spy
sampling the gunicorn master and every worker (``--subprocesses``, 100 samples/s, ``--gil``:
only the thread holding the GIL, so what costs a worker CPU in Python, not what waits on a
socket or the database's sleep). Each sample is put in one bucket by the innermost frame of
a known layer:

* ``fleetcache``: the cache itself (L1 lookups, L2 reads and promotions, writes, the
  listener);
* ``redis-py``: the connection, the socket reads and replies below fleetcache;
* ``flask/werkzeug``: routing, the request and response objects;
* ``gunicorn``: the worker loop, HTTP parsing, writing the response;
* ``app``: the benchmark's own endpoint and its logging of every read;
* ``other``: the standard library and the rest (threading, selectors, json...).

Reported per worker class and variant: the share of samples of each bucket, the 15
functions with the most samples where they were the innermost frame (self time), and the
10 fleetcache functions most often the innermost fleetcache frame. Not timed against
peers: it says where the rest of the fleet benchmark's gap to the dict ceiling goes
(benchmarks/README.md, "Profile of a loaded worker").

    python -m benchmarks.fleet_profile [--quick] [--worker-class gthread]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from . import fleet
from . import harness as h

NAME = "fleet_profile"
ROUNDS = (1, 1)  # one profile per worker class: samples, not rounds, make it stable
RATE = 100
TOP = 15
BUCKETS = ("fleetcache", "redis-py", "flask/werkzeug", "gunicorn", "app", "other")
# (bucket, path fragment): the first fragment found in a frame's file names its layer.
_LAYERS = (("fleetcache", "/fleetcache/"), ("redis-py", "/redis/"),
           ("flask/werkzeug", "/flask/"), ("flask/werkzeug", "/werkzeug/"),
           ("gunicorn", "/gunicorn/"), ("app", "fleet_app.py"))


def _layer(frame: str) -> str | None:
    where = "/" + frame.rpartition(" (")[2]  # py-spy names a package's files relative to it
    for bucket, fragment in _LAYERS:
        if fragment in where:
            return bucket
    return None


def classify(raw: str) -> dict[str, Any]:
    """Buckets and top self-time functions from py-spy's raw (collapsed) output: one line
    per distinct stack, ``frame;frame;...;innermost count``, a frame ``func (file:line)``."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        bucket = next((b for f in reversed(frames) if (b := _layer(f)) is not None), "other")
        buckets[bucket] += n
        leaves[_name(frames[-1])] += n
        if bucket == "fleetcache":
            ours[_name(next(f for f in reversed(frames) if _layer(f) == bucket))] += n
    return {"samples": total,
            "buckets": {b: buckets[b] / total if total else 0.0 for b in BUCKETS},
            "top": [(name, n / total) for name, n in leaves.most_common(TOP)] if total else [],
            "top_fleetcache": [(name, n / total) for name, n in ours.most_common(10)]
            if total else []}


def _name(frame: str) -> str:
    """``func (package/module.py)`` of a py-spy frame ``func (path:line)``."""
    func, _, where = frame.partition(" (")
    return f"{func} ({_short(where.rstrip(')').rpartition(':')[0])})"


def _short(path: str) -> str:
    """``fleetcache/core/l1.py`` from a full path: the part from the package on."""
    for marker in ("/site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path.lstrip("/") or "?"


VARIANTS = ("fleetcache", "dict")


def profile_fleet(variant: str, worker_class: str, url: str, tmp: str, *, warm_s: float,
                  seconds: float) -> dict[str, Any]:
    """One fleet under load, sampled by py-spy during the measured window."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with fleet.gunicorn(variant, worker_class, url, tmp) as (port, _, master):
        fleet.load(port, warm_s, fleet.CONCURRENCY)
        out = os.path.join(tmp, f"{variant}-{worker_class}.txt")
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(master), "--subprocesses", "--format", "raw",
             "--rate", str(RATE), "--gil", "--duration", str(int(seconds)), "--nonblocking",
             "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        res = fleet.load(port, seconds, fleet.CONCURRENCY)
        _, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}")
    profile = classify(Path(out).read_text())
    profile["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    print(f"  fleet_profile {worker_class} {variant}: {profile['samples']} samples, "
          f"{profile['rps']:.0f} req/s", flush=True)
    return profile


def measure(opts: h.Options, server: h.Server, classes: tuple[str, ...]) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="fleetcache-bench-profile-")
    try:
        return {f"{wc} {v}": profile_fleet(v, wc, server.url, tmp, warm_s=opts.pick(1, 5),
                                           seconds=opts.pick(3, 15))
                for wc in classes for v in VARIANTS}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tables(figures: dict[str, Any]) -> list[h.Table]:
    out = []
    t = h.Table("Share of a loaded fleet's samples by layer (innermost known frame)",
                ["layer", *figures])
    for b in BUCKETS:
        t.add(b, *(f"{figures[wc]['buckets'][b]:.1%}" for wc in figures))
    t.add("samples", *(f"{figures[wc]['samples']:,}" for wc in figures))
    t.add("req/s while sampled", *(f"{figures[wc]['rps']:,.0f}" for wc in figures))
    out.append(t)
    for wc, fig in figures.items():
        top = h.Table(f"{wc}: the {TOP} functions with the most self samples",
                      ["function (file)", "share"])
        for name, share in fig["top"]:
            top.add(name, f"{share:.1%}")
        out.append(top)
        if fig["top_fleetcache"]:
            ours = h.Table(f"{wc}: fleetcache's functions, innermost fleetcache frame",
                           ["function (file)", "share of all samples"])
            for name, share in fig["top_fleetcache"]:
                ours.add(name, f"{share:.1%}")
            out.append(ours)
    return out


def chart(figures: dict[str, Any]) -> dict[str, Any]:
    return {"title": "Where a loaded fleetcache worker's samples go", "panels": [
        {"title": "share of samples by layer", "unit": "%", "log": False,
         "categories": list(BUCKETS),
         "series": [{"label": wc, "values": [figures[wc]["buckets"][b] * 100
                                             for b in BUCKETS]} for wc in figures]}]}


def run(opts: h.Options, classes: tuple[str, ...] = fleet.WORKER_CLASSES) -> dict[str, Any]:
    figures, version, started = h.on_server(lambda server: measure(opts, server, classes))
    params = {"workers": fleet.WORKERS, "threads": fleet.THREADS, "keys": fleet.KEYS,
              "rate": RATE, "worker_classes": list(classes), "sampler": "py-spy raw, "
              "the GIL holder only"}
    return h.report(opts, NAME, version, started, params=params, figures=figures,
                    raw_rounds=figures, tables=tables(figures), goals=[],
                    chart=chart(figures))


def main() -> None:
    parser = h.parser("python -m benchmarks.fleet_profile")
    parser.add_argument("--worker-class", choices=fleet.WORKER_CLASSES, action="append")
    args = parser.parse_args()
    run(h.options(args, ROUNDS),
        tuple(args.worker_class) if args.worker_class else fleet.WORKER_CLASSES)


if __name__ == "__main__":
    main()
