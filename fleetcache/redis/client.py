"""The redis-py client a cache talks through: built from settings, or the user's own.

Built clients get short, bounded timeouts everywhere (a cache that waits seconds for a sick
Redis is worse than a miss). A client the application already has is used as it is, with
its own pool and timeouts: fleetcache then never closes its pool, since the application
owns it. A ``redis+sentinel://`` URL builds a client on the primary the sentinels name
(:mod:`fleetcache.redis.sentinel`), a ``redis+cluster://`` one a client on the primary of
the namespace's slot (:mod:`fleetcache.redis.cluster`).
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from ..core.config import SENTINEL_SCHEMES, CacheConfig, parse_cluster_url, parse_sentinel_url
from ..core.errors import ConfigError
from .cluster import make_cluster_client
from .sentinel import make_sentinel_client
from .tls import TLSConnection


def make_client(config: CacheConfig) -> redis.Redis:
    """A client on a blocking pool with bounded waits everywhere.

    ``BlockingConnectionPool`` makes callers queue for ``pool_timeout`` instead of failing
    at once when every connection is busy (many greenlets under gevent). Retries cover
    connection errors only: retrying a timeout just doubles the wait on a stalled server.
    """
    retry = Retry(
        ExponentialBackoff(cap=0.05, base=0.005),
        config.retries,
        supported_errors=(redis.ConnectionError,),
    )
    if config.url.startswith(SENTINEL_SCHEMES):
        return make_sentinel_client(config, parse_sentinel_url(config.url), retry)
    if config.is_cluster:
        return make_cluster_client(config, parse_cluster_url(config.url), retry)
    tls = {"connection_class": TLSConnection} if config.url.startswith("rediss://") else {}
    pool = redis.BlockingConnectionPool.from_url(
        config.url,
        **tls,
        max_connections=config.max_connections,
        timeout=config.pool_timeout,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        retry=retry,
        # RESP2 without client info: one round trip to set up a connection (plus AUTH)
        # instead of four (HELLO, CLIENT MAINT_NOTIFICATIONS, 2x CLIENT SETINFO), each
        # of which could take a full socket_timeout on a slow link.
        protocol=2,
        driver_info=None,
    )
    return redis.Redis(connection_pool=pool)


def check_client(client: object) -> redis.Redis:
    """Accept an application's ``redis.Redis``, or say why it cannot serve a cache.

    Values are bytes end to end, so a client that decodes replies to str would corrupt
    every read. A ``RedisCluster`` routes each command by its keys, and fleetcache's run
    on one slot: the cache builds its own slot-following client from the URL.
    """
    if isinstance(client, RedisCluster):
        raise ConfigError("a RedisCluster client cannot serve a cache: pass "
                          "url='redis+cluster://host:port' instead (fleetcache keeps the "
                          "namespace in one slot and follows it)")
    if not isinstance(client, redis.Redis):
        raise ConfigError(f"client must be a redis.Redis, got {type(client).__name__}")
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ConfigError("client has decode_responses=True; fleetcache stores bytes: "
                          "pass a client made without it")
    return client
