"""Redis Sentinel: a client that follows the primary, and the watch that notices a switch.

redis-py's :class:`~redis.sentinel.SentinelConnectionPool` asks the sentinels for the
primary each time it opens a connection, and turns a ``READONLY`` reply (a demoted primary)
into a ``ConnectionError``, which the client's retry answers with a reconnect to the new
one. What it does not do is leave a primary that is still up: after ``SENTINEL FAILOVER``
(or a partition) the old primary keeps accepting writes on the connections it has until
the sentinels demote it, ~10 s later (measured here, Redis 7.0: they wait 4 publish
periods before converting it), and until then nothing published on the new primary reaches
a listener still subscribed on the old one. Most of fleetcache's connections are held for
good (the listener's, and the command lane's idle ones), so without help a worker would
write into a server about to discard its data and miss every invalidation for those
seconds. Hence:

* :class:`PrimaryWatch`, called by the invalidation listener on its watchdog beat, asks
  the sentinels where the primary is; when it moved away from the listener's connection it
  drops the lane's idle connections and tells the listener to reconnect. The reconnect is
  a gap like any other (:mod:`fleetcache.redis.bus`), and since the new primary has
  another ``run_id`` every worker flushes its L1: the new primary may lack the last writes
  the old one acknowledged (replication is asynchronous). The switch is noticed within
  ``health_check_interval`` of the sentinels announcing it.
* :class:`SentinelLane` never keeps a connection to a former primary (one that was busy
  while the watch fired comes back to the lane afterwards).
* :class:`BlockingSentinelConnectionPool`: callers queue for ``pool_timeout`` as on one
  server, instead of the plain pool's immediate error when every connection is busy.

Fork: the pool is redis-py's (fork-safe by ``_checkpid``), and fleetcache builds a fresh
client, with a fresh :class:`~redis.sentinel.Sentinel`, in every process anyway
(:mod:`fleetcache.core.process`). ``check_connection`` (a PING after each connect) is
left off: it proves the address answers, not that it is the primary, and the first
command proves both.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedSSLConnection

from ..core.config import CacheConfig, SentinelURL
from .lane import CommandLane
from .options import query_options
from .tls import SettledTLS

logger = logging.getLogger("fleetcache")

_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")


class SettledSentinelSSLConnection(SettledTLS, SentinelManagedSSLConnection):
    """A TLS connection to the primary, ready when handed out (fleetcache.redis.tls)."""


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel-managed pool whose callers wait ``timeout`` for a free connection."""


def make_sentinel_client(config: CacheConfig, target: SentinelURL, retry: Retry) -> redis.Redis:
    """A client on the primary of ``target``'s service, with the settings' short timeouts
    and bounded retries for the sentinels and the servers alike (redis-py's defaults would
    wait 5 s on each sentinel in turn before giving up)."""
    options = dict(target.options)
    auth = {name[len("sentinel_"):]: options.pop(name) for name in _SENTINEL_AUTH
            if name in options}
    extra = query_options(options)
    tls: dict[str, Any] = {"ssl": True, **extra} if target.ssl else dict(extra)
    # The servers' TLS connections PING at connect (fleetcache.redis.tls).
    servers: dict[str, Any] = ({"connection_class": SettledSentinelSSLConnection}
                               if target.ssl else {})
    common: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "retry": retry,
        "protocol": 2,  # one round trip to set up a connection, as in client.make_client
        "driver_info": None,
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(target.sentinels), sentinel_kwargs={**common, **tls, **auth})
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        target.service,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=config.max_connections,
        timeout=config.pool_timeout,
        db=target.db,
        username=target.username,
        password=target.password,
        **common,
        **tls,
        **servers,
    )
    return client


def sentinel_pool(client: redis.Redis) -> SentinelConnectionPool | None:
    """The client's pool if Sentinel manages it (built here, or the application's
    ``Sentinel.master_for``); None for a single server."""
    pool = client.connection_pool
    return pool if isinstance(pool, SentinelConnectionPool) else None


class SentinelLane(CommandLane):
    """A command lane that hands a connection to a former primary back, disconnected."""

    __slots__ = ()

    def _put_back(self, conn: Any) -> None:
        primary = self._pool.master_address  # type: ignore[attr-defined]
        if (primary is not None and conn._sock is not None
                and (conn.host, conn.port) != primary):
            conn.disconnect()  # the primary moved while it was busy: never reuse it
            self._pool.release(conn)
            return
        super()._put_back(conn)


class PrimaryWatch:
    """Called by the listener on its watchdog beat: True if the primary moved away from
    the listener's connection (then the listener reconnects, which is a gap)."""

    __slots__ = ("_lane", "_pool", "_unsure")

    def __init__(self, pool: SentinelConnectionPool, lane: CommandLane) -> None:
        self._pool = pool
        self._lane = lane
        self._unsure = False

    def __call__(self, connection: Any) -> bool:
        try:
            # Also disconnects the pool's idle connections if the address changed.
            primary = self._pool.get_master_address()  # type: ignore[no-untyped-call, unused-ignore]
        except redis.RedisError as exc:
            # No sentinel answers (or none names a healthy primary): the listener's own
            # PING watchdog still guards its connection. Said once per spell.
            if not self._unsure:
                self._unsure = True
                logger.warning("fleetcache: no sentinel names the primary of %r (%s); "
                               "staying on the current one", self._pool.service_name,
                               type(exc).__name__)
            return False
        self._unsure = False
        if connection is None or (connection.host, connection.port) == tuple(primary):
            return False
        self._lane.close()  # its idle connections still lead to the former primary
        logger.warning("fleetcache: the sentinels moved the primary of %r to %s:%s; "
                       "reconnecting", self._pool.service_name, *primary)
        return True
