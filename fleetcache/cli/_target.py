"""What the fleet-view subcommands share: which server and namespace, and reaching it."""

from __future__ import annotations

import argparse
import os

import redis

from ..core.config import env_url
from ..observe.fleet import FleetView, client_for, read_fleet
from ..redis.errors import mapped_errors
from ..redis.keys import KeyLayout


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--namespace``, defaulting to what the app's environment says."""
    parser.add_argument(
        "--url", default=None,
        help="Redis/Valkey URL (default: FLEETCACHE_REDIS_URL, REDIS_URL, else "
             "redis://127.0.0.1:6379/0)")
    parser.add_argument(
        "--namespace", default=None,
        help="the cache's namespace (default: FLEETCACHE_NAMESPACE, else fleetcache)")


def url_of(args: argparse.Namespace) -> str:
    """The server the command talks to (``ConfigError`` for ``embedded``: nobody started
    one for this command)."""
    return str(args.url) if args.url else env_url()


def namespace_of(args: argparse.Namespace) -> str:
    return str(args.namespace or os.environ.get("FLEETCACHE_NAMESPACE") or "fleetcache")


def connect(args: argparse.Namespace) -> tuple[redis.Redis, KeyLayout]:
    """A short-timeout client (no cache, listener or reporter) and the namespace's names."""
    return client_for(url_of(args), namespace_of(args))


def fleet(client: redis.Redis, keys: KeyLayout) -> FleetView:
    """The fleet view; redis-py errors as fleetcache's ``BackendError`` tree (the command
    prints one line instead of a traceback)."""
    with mapped_errors("reading the fleet view"):
        return read_fleet(client, keys)
