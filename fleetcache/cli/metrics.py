"""``fleetcache metrics``: the fleet's Prometheus metrics, printed in the text format.

The same text the app's ``/metrics`` route serves (:mod:`fleetcache.observe.prometheus`),
read straight from Redis: a cron job, a node-exporter textfile collector, or a sidecar can
expose it without touching the app.
"""

from __future__ import annotations

import argparse
import sys

from ..observe.prometheus import render
from ._target import add_target_arguments, connect, fleet

SUMMARY = "print the fleet's Prometheus metrics (text exposition format)"
DESCRIPTION = """\
Prints fleetcache_hits_total{host,tier}, fleetcache_misses_total{host},
fleetcache_computes_total, fleetcache_invalidations_*_total, fleetcache_redis_errors_total,
fleetcache_l1_entries, fleetcache_workers and more, one sample per host, in Prometheus's
text exposition format (version 0.0.4), from the snapshots every worker publishes to
Redis. Counters include the workers each host retired, so they never go down when a
worker is recycled."""


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the metrics; 0 on success."""
    client, keys = connect(args)
    try:
        sys.stdout.write(render(fleet(client, keys)))
    finally:
        client.close()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fleetcache metrics``."""
    add_target_arguments(parser)
    parser.set_defaults(run=run)
