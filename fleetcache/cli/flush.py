"""``fleetcache flush``: clear a namespace, in Redis and in every worker's L1.

Goes through :meth:`FleetCache.clear`, so the deletes and the "flush everything" notice
are the app's own: every live worker drops its whole L1 too (a bare ``redis-cli DEL``
would leave every L1 serving the old values until they expire).
"""

from __future__ import annotations

import argparse
import sys

from ..core.front import FleetCache
from ._target import add_target_arguments, namespace_of, url_of

SUMMARY = "delete every value of a namespace and flush every worker's L1"
DESCRIPTION = """\
Deletes every cached value of the namespace from Redis and sends the notice that makes
every worker of the fleet drop its whole L1. Locks, streams and the fleet view's worker
stats are left alone. Asks for confirmation; --yes skips the question (for scripts).
Exit code 0 when flushed, 1 when not confirmed."""


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Flush after confirmation; 0 when done, 1 when declined."""
    url, namespace = url_of(args), namespace_of(args)
    if not args.yes:
        if not sys.stdin.isatty():
            print("fleetcache flush: not confirmed (no terminal to ask on); pass --yes",
                  file=sys.stderr)
            return 1
        answer = input(f"Delete every value of namespace {namespace!r} and flush every "
                       f"worker's L1? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not flushed")
            return 1
    # No reporter: this short-lived process is not a worker of the fleet.
    with FleetCache.from_url(url, namespace=namespace, stats_interval=0) as cache:
        deleted = cache.clear()
    print(f"flushed namespace {namespace!r}: {deleted} value(s) deleted, every worker's L1 "
          f"told to drop everything")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fleetcache flush``."""
    add_target_arguments(parser)
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(run=run)
