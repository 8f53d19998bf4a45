"""``fleetcache stats``: every live worker of a namespace, on every host, with totals.

Reads the snapshots the workers publish every ``stats_interval`` (the fleet view,
:mod:`fleetcache.observe`); needs no cache of its own, so it never shows up in the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..observe.fleet import FleetView
from ._target import add_target_arguments, connect, fleet, namespace_of
from .extras import require

SUMMARY = "show every live worker's cache stats on every host, with totals"
DESCRIPTION = """\
Every worker process of a fleetcache app publishes its counters to Redis every
stats_interval seconds (5 by default); this reads them back: one row per live worker
(host, pid, L1 size, hits per tier, misses, computes, invalidations, Redis errors, bus
state), totals of the live workers, and what retired workers of each host had counted.
A worker that stops reporting leaves the table within three intervals.

--json prints {"workers": [...], "totals": {...}, "retired": {host: {...}}} instead;
--watch refreshes the table until Ctrl-C."""

_COLUMNS = (("host", "host"), ("pid", "pid"), ("L1 size", "l1_size"), ("lookups", "lookups"),
            ("L1 hits", "l1_hits"), ("L2 hits", "l2_hits"), ("misses", "misses"),
            ("computes", "computes"), ("inval. sent", "invalidations_sent"),
            ("inval. recv", "invalidations_received"), ("Redis err.", "redis_errors"),
            ("hit rate", "hit_rate"), ("bus", "bus"), ("age s", "age"))


def _cells(row: dict[str, Any], now: float) -> list[str]:
    cells = []
    for _, name in _COLUMNS:
        if name == "hit_rate":
            cells.append(f"{row['hit_rate']:.1%}")
        elif name == "bus":
            cells.append("suspended" if row.get("l1_suspended") else
                         "up" if row.get("bus_connected") else "DOWN")
        elif name == "age":
            cells.append(f"{max(0.0, now - row['reported']):.1f}" if "reported" in row else "")
        else:
            cells.append(str(row.get(name, "")))
    return cells


def table(view: FleetView, namespace: str) -> Any:
    """The rich table of ``view``."""
    from rich.table import Table  # noqa: PLC0415 - the demo extra's dependency

    workers = view.workers
    hosts = len({w.host for w in workers})
    out = Table(title=f"fleetcache stats: namespace {namespace!r}, {len(workers)} live "
                      f"worker(s) on {hosts} host(s)")
    for title, name in _COLUMNS:
        out.add_column(title, justify="left" if name in ("host", "bus") else "right")
    for worker in workers:
        out.add_row(*_cells(worker.row(), view.server_time))
    totals = dict(view.totals(), host="total", pid=f"{len(workers)} workers")
    out.add_section()
    out.add_row(*_cells(totals, view.server_time)[:-2], "", "", style="bold")
    return out


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the fleet view once (or every ``--watch`` seconds); 0 on success."""
    if not args.json:
        require("demo", "rich")
    client, keys = connect(args)
    namespace = namespace_of(args)
    try:
        if args.json:
            print(json.dumps(fleet(client, keys).to_json(), indent=2, sort_keys=True))
            return 0
        if args.watch is None:
            from rich.console import Console  # noqa: PLC0415

            # Piped (not a terminal), rich would wrap every cell at 80 columns.
            Console(width=None if sys.stdout.isatty() else 160).print(
                table(fleet(client, keys), namespace))
            return 0
        from rich.live import Live  # noqa: PLC0415

        with Live(table(fleet(client, keys), namespace), refresh_per_second=2) as live:
            try:
                while True:
                    time.sleep(args.watch)
                    live.update(table(fleet(client, keys), namespace))
            except KeyboardInterrupt:
                return 0
    finally:
        client.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fleetcache stats``."""
    add_target_arguments(parser)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                     metavar="SECONDS", help="refresh the table every SECONDS (default 2)")
    parser.set_defaults(run=run)
