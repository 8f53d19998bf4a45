"""Run the whole benchmark suite: ``python -m benchmarks [--quick] [--only NAME ...]``.

Each benchmark prints its tables and goal verdicts and writes results/<name>.json; then
charts.py renders results/<name>.png for each and results/SUMMARY.md. A benchmark that
fails is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from . import charts
from . import harness as h

BENCHMARKS = ("l1_hit", "l2_hit", "codec", "stampede", "invalidation", "fleet", "memory",
              "hit_ratio", "stale", "replay", "tags", "sizing", "cluster")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="fleetcache benchmarks: tables on stdout, JSON/PNG/SUMMARY.md in results/")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke pass: short rounds, whole suite in about 2 minutes")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these (repeat or comma-separate): {', '.join(BENCHMARKS)}")
    parser.add_argument("--rounds", type=int, help="rounds per benchmark (default: its own)")
    parser.add_argument("--results", type=Path, default=h.RESULTS,
                        help="where JSON, PNG and SUMMARY.md go (default benchmarks/results)")
    parser.add_argument("--no-charts", action="store_true", help="skip PNGs and SUMMARY.md")
    args = parser.parse_args(argv)
    selected = list(BENCHMARKS)
    if args.only:
        wanted = [n.strip() for arg in args.only for n in arg.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
        selected = [n for n in BENCHMARKS if n in wanted]
    started = time.monotonic()
    info = h.machine()
    print(f"fleetcache benchmarks{' (--quick)' if args.quick else ''}: {', '.join(selected)}")
    print(f"machine: {h.machine_note(info)}", flush=True)
    failed = []
    for name in selected:
        module = importlib.import_module(f"benchmarks.{name}")
        rounds = args.rounds or module.ROUNDS[not args.quick]
        opts = h.Options(quick=args.quick, rounds=rounds, results=args.results)
        print(f"\n=== {name} ({rounds} round{'s' if rounds != 1 else ''}) ===", flush=True)
        t0 = time.monotonic()
        try:
            module.run(opts)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - t0:.1f} s ===", flush=True)
    if not args.no_charts:
        for path in charts.render_all(args.results, only=selected):
            print(f"wrote {path}")
    print(f"\nall done in {time.monotonic() - started:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
