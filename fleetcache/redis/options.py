"""The query arguments of a URL that names several servers, read as redis-py reads them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from redis.connection import parse_url


def query_options(options: dict[str, str]) -> dict[str, Any]:
    """``{"ssl_ca_certs": "/ca.pem", "socket_keepalive": "true"}`` as redis-py's
    ``from_url`` would pass them to a connection, types included."""
    parsed = parse_url("redis://h/?" + urlencode(options))  # type: ignore[no-untyped-call, unused-ignore]
    return {k: v for k, v in parsed.items() if k != "host"}
