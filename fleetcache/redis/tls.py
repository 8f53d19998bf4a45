"""TLS connections that are ready when the pool hands them out.

A TLS 1.3 server sends its session tickets right after the handshake. fleetcache's
connections send nothing while connecting (RESP2 and no ``CLIENT SETINFO``: one round trip
less on every connect, see :mod:`fleetcache.redis.client`), so without credentials nothing
reads those bytes, and redis-py's pool then finds "data" on a fresh connection and refuses
it ("Connection has data", then "Connection not ready": measured here, 36 of 50 fresh
connections to a TLS Redis 7.0 failed their first command). One PING at connect reads the
tickets with its reply.
"""

from __future__ import annotations

from typing import Any

import redis


class SettledTLS:
    """Mixin for a redis-py TLS connection class: a PING ends every connect."""

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]
        self.send_command("PING", check_health=False)  # type: ignore[attr-defined]
        self.read_response()  # type: ignore[attr-defined]


class TLSConnection(SettledTLS, redis.SSLConnection):
    """redis-py's SSLConnection, ready when handed out (see the module doc)."""
