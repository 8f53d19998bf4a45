"""The ``fleetcache`` command (and ``python -m fleetcache``).

Each subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``; its
optional dependencies are imported only inside ``run``, and a missing one is reported as
one line naming the ``pip install`` that brings it, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..core.errors import FleetCacheError
from . import demo, flush, inspect, metrics, stats
from .extras import MissingExtraError

_DESCRIPTION = """\
fleetcache: a two-tier cache for WSGI fleets (per-process L1 + shared Redis/Valkey L2,
fleet-wide invalidation, one compute per fleet for a cold key).

Without FLEETCACHE_REDIS_URL (or REDIS_URL) set, commands that need a server start a
private embedded one (the 'embedded' extra, or redis-server on PATH)."""


def parser() -> argparse.ArgumentParser:
    """The command line: one subparser per subcommand."""
    top = argparse.ArgumentParser(
        prog="fleetcache", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"fleetcache {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in (("demo", demo), ("stats", stats), ("inspect", inspect),
                         ("flush", flush), ("metrics", metrics)):
        module.add_arguments(sub.add_parser(
            name, help=module.SUMMARY, description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the subcommand; its exit code."""
    top = parser()
    args = top.parse_args(argv)
    try:
        return int(args.run(args, top))
    except MissingExtraError as exc:
        print(f"fleetcache {args.command}: {exc}", file=sys.stderr)
        return 2
    except FleetCacheError as exc:  # Redis unreachable, a bad URL: one line, no traceback
        print(f"fleetcache {args.command}: {exc}", file=sys.stderr)
        return 1
