"""All settings in one frozen, validated object, with every default and its unit.

Timeouts are deliberately short: a cache that waits seconds for a sick Redis is worse than
a miss (redis-py's own defaults stall a GET for ~4 s on a refused port and ~1 min on a
stopped server).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError, InvalidArgumentError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
EMBEDDED = "embedded"  # the URL that asks for a private server (fleetcache.server)

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_SCHEMES = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
_DEFAULT_FILL_TIMEOUT = 60.0
MIN_CONNECTIONS = 4  # the listener's one, the lane's idle ones, and room for the rest
MAX_TTL = 10 * 365 * 24 * 3600.0  # ten years: anything longer is a bug, not a TTL
SyncStrategy = Literal["invalidate", "update"]
SYNC_STRATEGIES: tuple[SyncStrategy, ...] = ("invalidate", "update")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Settings of one :class:`~fleetcache.FleetCache`.

    Durations are in seconds unless stated.

    Attributes:
        url: Redis/Valkey URL (``redis://``, ``rediss://``, ``unix://``), password allowed;
            or a Sentinel deployment,
            ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
            (``rediss+sentinel://`` for TLS): the cache follows the primary that the
            sentinels name, through failovers (see :func:`parse_sentinel_url`); or a
            Redis Cluster, ``redis+cluster://[user:password@]host:port[,host:port...]``
            (``rediss+cluster://`` for TLS; any of its nodes will do): the namespace then
            lives in one hash slot and the cache follows it through failovers and slot
            moves (see :mod:`fleetcache.redis.cluster`).
        cluster: read a ``redis://`` or ``rediss://`` ``url`` as a cluster node (the same
            as its ``+cluster`` scheme).
        namespace: prefix of every key, channel, lock and stream: two apps can share a Redis.
        l1_capacity: entries kept per process; when full, frequency decides who stays
            (see :mod:`fleetcache.core.l1`).
        l1_ttl: longest life of an L1 entry (never beyond the entry's L2 TTL).
        default_ttl: L2 TTL when a call gives neither ``ttl`` nor ``strategy``.
        stream_maxlen: approximate MAXLEN of ``publish_to_stream`` when none is given.
        socket_timeout: per cache command.
        connect_timeout: per connect.
        retries: extra attempts on a connection error (never on a timeout).
        max_connections: pool size per process (at least 4); callers wait
            ``pool_timeout`` for a slot, then get ``PoolExhaustedError``.
        pool_timeout: how long a caller waits for a free connection of the pool.
        stream_timeout_margin: added to ``block_ms`` for the socket timeout of XREAD BLOCK.
        lock_masters: URLs (``redis://``, ``rediss://``, ``unix://``) of independent
            Redis masters that hold the fill lock by quorum (a majority, as pottery's
            Redlock with ``masters=``), so one compute per fleet survives the cache
            server losing its lock (a failover to a replica that had not got it, a
            restart, a flush). Empty: the lock lives on the cache's own server only, as
            one command of the lookup. With masters, a cold miss costs one more round trip
            to take the quorum and one to release it; a lookup that finds the value costs
            nothing more. Without a reachable majority, computes fall back to the cache
            server's lock alone (see :mod:`fleetcache.redis.quorum`).
        lock_timeout: Redlock auto-release: how long a crashed holder blocks a key, and the
            longest a waiter (another thread, or another process) waits for a compute
            before computing itself.
        fill_timeout: the longest a compute may run and still have its value stored (its
            fill lease, which any write of the key revokes, lives this long); at least
            ``lock_timeout``. None: 60 s, or ``lock_timeout`` if that is longer.
        fail_safe_throttle: after a refresh of a stale value raised, no process of the
            fleet tries that key's compute again for this long (its lock is kept), while
            callers keep getting the stale value.
        ttl_jitter: every TTL written is shortened by a random fraction in
            ``[0, ttl_jitter]`` (never lengthened), so keys written together do not expire
            together; 0 writes exact TTLs.
        health_check_interval: how often the invalidation listener PINGs its connection.
        health_check_timeout: a PONG later than this means the bus is down (L1 flushed).
        degraded_l1_ttl: L1 life of entries stored while the bus is down (bounds staleness).
        max_listener_lag: L1 serves only while the listener has drained every notice that
            reached it until at most this long ago; past it (the listener starved of CPU by
            busy greenlets or threads) a read waits up to this long again for the listener,
            then goes to Redis. A read renews it itself when the listener has nothing to
            apply, so an idle listener does not wake to renew it.
        reconnect_backoff: the longest pause between listener reconnect attempts.
        replay_log_length: notices kept in the namespace's replay log (a stream, trimmed
            approximately), so a listener that lost its connection replays what it missed
            and keeps L1 instead of flushing it; 0 turns the log off (every gap flushes).
        replay_log_age: notices older than this leave the log too (a listener away longer
            flushes).
        sync_strategy: what a write tells the other processes: ``"invalidate"`` (drop
            your copy, re-read L2 when asked) or ``"update"`` (here is the new value:
            processes holding the key replace their L1 entry, no L2 read). Updates are
            ordered by the write's version (its replay-log id): an entry is never replaced
            by an older value, the writer's own racing writes included. Needs the replay
            log; reads then fetch the namespace's position with each value (MGET).
        sync_value_limit: under ``"update"``, encoded values larger than this (bytes) are
            announced as invalidations: every subscriber receives each notice.
        stats_interval: how often each process publishes its stats snapshot to Redis for
            the fleet view (``fleetcache stats``, ``/metrics``; see
            :mod:`fleetcache.observe`), from a background thread; the snapshot lives about
            three intervals, so a worker gone stops being shown that long after its last
            report. 0 turns reporting off.
        max_value_bytes: encoded values above this raise ``ValueTooLargeError``.
        max_key_length: keys longer than this (in characters) raise ``InvalidKeyError``.
        signing_key: a secret (16+ bytes); every L2 value then carries an HMAC and values
            that fail verification read as corrupt, so a client with Redis access cannot
            plant values in the app's cache. Every process of the fleet needs the same key.
        strict_types: refuse (``ValueEncodeError``) every value that would not read back
            as the same types: tuples, sets, Structs, dataclasses, dict and list
            subclasses. Off by default (they read back as lists and dicts); on by default in
            the cachelib/Flask-Caching backend, whose contract is "get returns what set
            stored". Naive datetimes, dates, times, UUIDs, Decimals and Enums are refused
            either way: they would read back as plain str or int.
    """

    url: str = DEFAULT_URL
    cluster: bool = False
    namespace: str = "fleetcache"
    l1_capacity: int = 2000
    l1_ttl: float = 300.0
    default_ttl: float = 3600.0
    stream_maxlen: int = 1000
    socket_timeout: float = 0.25
    connect_timeout: float = 0.25
    retries: int = 1
    max_connections: int = 64
    pool_timeout: float = 0.5
    stream_timeout_margin: float = 1.0
    lock_masters: tuple[str, ...] = ()
    lock_timeout: float = 10.0
    fill_timeout: float | None = None
    fail_safe_throttle: float = 2.0
    ttl_jitter: float = 0.05
    health_check_interval: float = 1.0
    health_check_timeout: float = 0.5
    degraded_l1_ttl: float = 1.0
    max_listener_lag: float = 0.05
    reconnect_backoff: float = 1.0
    replay_log_length: int = 10_000
    replay_log_age: float = 600.0
    sync_strategy: SyncStrategy = "invalidate"
    sync_value_limit: int = 4096
    stats_interval: float = 5.0
    max_value_bytes: int = 16 * 1024 * 1024
    max_key_length: int = 1024
    signing_key: str | bytes | None = None
    strict_types: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(_SCHEMES):
            raise ConfigError("url must be a redis://, rediss://, unix://, redis+sentinel://, "
                              "rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL")
        if not isinstance(self.cluster, bool):
            raise ConfigError(f"cluster must be True or False, got {self.cluster!r}")
        if self.cluster and not self.url.startswith(("redis://", "rediss://",
                                                      *CLUSTER_SCHEMES)):
            raise ConfigError("cluster=True needs a redis:// or rediss:// url (a node of the "
                              "cluster)")
        if self.url.startswith(SENTINEL_SCHEMES):
            parse_sentinel_url(self.url)
        elif self.is_cluster:
            parse_cluster_url(self.url)
        else:
            _check_url("url", self.url)
        if isinstance(self.lock_masters, list):  # a settings file's list: kept as a tuple
            object.__setattr__(self, "lock_masters", tuple(self.lock_masters))
        _check_lock_masters(self.lock_masters)
        if not isinstance(self.namespace, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}",
                                                                     self.namespace):
            raise ConfigError("namespace must be 1-64 characters of [A-Za-z0-9_.-]")
        for name in ("l1_capacity", "stream_maxlen", "max_connections", "max_value_bytes",
                     "max_key_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if (not isinstance(self.replay_log_length, int)
                or isinstance(self.replay_log_length, bool) or self.replay_log_length < 0):
            raise ConfigError(f"replay_log_length must be an int >= 0, got "
                              f"{self.replay_log_length!r}")
        if self.sync_strategy not in SYNC_STRATEGIES:
            raise ConfigError(f"sync_strategy must be one of {', '.join(SYNC_STRATEGIES)}, "
                              f"got {self.sync_strategy!r}")
        if self.sync_strategy == "update" and not self.replay_log_length:
            raise ConfigError('sync_strategy="update" needs the replay log (its ids order '
                              'the updates): replay_log_length must be > 0')
        if (not isinstance(self.sync_value_limit, int)
                or isinstance(self.sync_value_limit, bool) or self.sync_value_limit < 0):
            raise ConfigError(f"sync_value_limit must be an int >= 0, got "
                              f"{self.sync_value_limit!r}")
        if not isinstance(self.strict_types, bool):
            raise ConfigError(f"strict_types must be True or False, got {self.strict_types!r}")
        if self.signing_key is not None and (
            not isinstance(self.signing_key, str | bytes) or len(self.signing_key) < 16
        ):
            raise ConfigError("signing_key must be a str or bytes of at least 16 characters")
        if (not isinstance(self.retries, int) or isinstance(self.retries, bool)
                or self.retries < 0):
            raise ConfigError(f"retries must be an int >= 0, got {self.retries!r}")
        if self.max_connections < MIN_CONNECTIONS:
            raise ConfigError(
                f"max_connections must be at least {MIN_CONNECTIONS}, got "
                f"{self.max_connections}: the invalidation listener holds one connection "
                f"for good and the command lane keeps some idle")
        for name in ("l1_ttl", "default_ttl", "socket_timeout", "connect_timeout",
                     "pool_timeout", "stream_timeout_margin", "lock_timeout",
                     "fail_safe_throttle", "health_check_interval", "health_check_timeout",
                     "degraded_l1_ttl", "max_listener_lag", "reconnect_backoff",
                     "replay_log_age"):
            check_seconds(name, getattr(self, name), ConfigError)
        if self.stats_interval != 0 or isinstance(self.stats_interval, bool):
            check_seconds("stats_interval", self.stats_interval, ConfigError)
        if (isinstance(self.ttl_jitter, bool) or not isinstance(self.ttl_jitter, int | float)
                or not 0 <= self.ttl_jitter < 1):
            raise ConfigError(f"ttl_jitter must be a fraction in [0, 1), got "
                              f"{self.ttl_jitter!r}")
        if self.fill_timeout is not None and check_seconds(
                "fill_timeout", self.fill_timeout, ConfigError) < self.lock_timeout:
            raise ConfigError(f"fill_timeout ({self.fill_timeout} s) must be at least "
                              f"lock_timeout ({self.lock_timeout} s): a fill still holding its "
                              f"lock must be able to store")

    @classmethod
    def from_env(cls, **overrides: object) -> CacheConfig:
        """Settings with the URL from ``FLEETCACHE_REDIS_URL`` or ``REDIS_URL``."""
        overrides.setdefault("url", env_url())
        return cls(**overrides)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> CacheConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def is_cluster(self) -> bool:
        """Whether ``url`` names a Redis Cluster (its scheme, or ``cluster=True``)."""
        return self.cluster or self.url.startswith(CLUSTER_SCHEMES)

    @property
    def fill_lease(self) -> float:
        """Seconds a fill's lease lives (``fill_timeout``, or its default)."""
        if self.fill_timeout is not None:
            return self.fill_timeout
        return max(_DEFAULT_FILL_TIMEOUT, self.lock_timeout)

    @property
    def signing_key_bytes(self) -> bytes | None:
        """The signing key as bytes (UTF-8 for a str), or None."""
        key = self.signing_key
        return key.encode() if isinstance(key, str) else key

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs and reprs."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"CacheConfig(url={self.safe_url!r}, namespace={self.namespace!r})"


def _check_url(name: str, url: str) -> None:
    """A single server's URL, checked as redis-py would read it (never repeated in the
    error: it may hold a password)."""
    if not _well_formed(url):
        raise ConfigError(f"{name} is malformed: percent-encode '/', '?', '#', '@' and '%' "
                          f"in the password (urllib.parse.quote(password, safe=''))")
    _check_db(url)


def _check_lock_masters(masters: object) -> None:
    if not isinstance(masters, tuple) or not all(isinstance(m, str) for m in masters):
        raise ConfigError("lock_masters must be a tuple (or list) of URLs (str)")
    for i, url in enumerate(masters):
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"lock_masters[{i}] must be a redis://, rediss:// or unix:// "
                              f"URL: each lock master is one independent server")
        _check_url(f"lock_masters[{i}]", url)
    if len(set(masters)) != len(masters):
        raise ConfigError("lock_masters names a server twice: a quorum needs independent "
                          "masters")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL, taken apart (:func:`parse_sentinel_url`)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None = field(repr=False)  # never in a repr, a log or an error
    ssl: bool
    options: dict[str, str] = field(repr=False)  # the query string, as redis-py reads it


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A Redis Cluster URL, taken apart (:func:`parse_cluster_url`)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None = field(repr=False)  # never in a repr, a log or an error
    ssl: bool
    options: dict[str, str] = field(repr=False)  # the query string, as redis-py reads it


_HOST = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([A-Za-z0-9_.\-]+)(?::(\d+))?")
_SENTINEL_PORT = 26379
_REDIS_PORT = 6379


@dataclass(frozen=True, slots=True)
class _HostListURL:
    """``scheme://[user:password@]host:port[,host:port...][/path][?query]``, taken apart."""

    hosts: tuple[tuple[str, int], ...]
    path: str
    username: str | None
    password: str | None = field(repr=False)
    ssl: bool
    options: dict[str, str] = field(repr=False)


def _parse_host_list(url: str, what: str, default_port: int) -> _HostListURL:
    """The parts every URL naming several servers shares. Errors are ``ConfigError`` and
    never repeat any part of the URL: an unescaped character in the password moves part of
    it into the host list or the path."""
    scheme, _, rest = url.partition("://")
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if fragment or "@" in path + query:
        raise ConfigError("url is malformed: percent-encode '/', '?', '#', '@' and '%' in "
                          "the password (urllib.parse.quote(password, safe=''))")
    found = []
    for i, host in enumerate(hosts.split(",")):
        match = _HOST.fullmatch(host)
        port = None if match is None else int(match[2] or match[4] or default_port)
        if match is None or port is None or not 0 < port < 65536:
            raise ConfigError(f"url: {what} #{i + 1} is not host:port (the URL lists "
                              f"host:port[,host:port...])")
        found.append((match[1] or match[3], port))
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return _HostListURL(tuple(found), path, username, password,
                        scheme.startswith("rediss"), dict(parse_qsl(query)))


def parse_sentinel_url(url: str) -> SentinelURL:
    """Take ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
    apart (``rediss+sentinel://``: TLS to the sentinels and the servers).

    The credentials are the servers' (primary and replicas: an ACL user and its password,
    as in ``redis://``); sentinels that require their own give them as
    ``?sentinel_username=...&sentinel_password=...``. A host without a port means 26379.
    Other query arguments are redis-py's (``ssl_ca_certs=``, ...).
    """
    parts = _parse_host_list(url, "sentinel", _SENTINEL_PORT)
    service, _, db = parts.path.partition("/")
    if not service:
        raise ConfigError("url names no service: redis+sentinel://host:port/service[/db]")
    db = db.strip("/")
    if db and not db.isdigit():
        raise ConfigError("url: the database after the service name must be a number")
    return SentinelURL(parts.hosts, unquote(service), int(db or 0), parts.username,
                       parts.password, parts.ssl, parts.options)


def parse_cluster_url(url: str) -> ClusterURL:
    """Take ``redis+cluster://[user:password@]host:port[,host:port...]`` apart
    (``rediss+cluster://``: TLS; a ``redis://`` or ``rediss://`` URL with
    ``cluster=True`` reads the same way, as one node).

    Any node will do: the cluster tells where the rest are. A host without a port means
    6379; a cluster has database 0 only, so a path is ``/0`` or nothing. Query arguments
    are redis-py's (``ssl_ca_certs=``, ...).
    """
    parts = _parse_host_list(url, "node", _REDIS_PORT)
    if parts.path.strip("/") not in ("", "0") or parts.options.get("db", "0") != "0":
        raise ConfigError("url names a database: a Redis Cluster has database 0 only")
    return ClusterURL(parts.hosts, parts.username, parts.password, parts.ssl,
                      parts.options)


def _well_formed(url: str) -> bool:
    """False when an unescaped character would make redis-py misparse the URL (and then
    quote part of the password in its error)."""
    if url.startswith("unix://"):
        return True
    try:
        parts = urlsplit(url)  # raises ValueError for an unclosed "[" (IPv6 host)
        parts.port  # noqa: B018 - raises ValueError for "host:<part of a password>"
    except ValueError:
        return False
    return "@" not in parts.path + parts.query + parts.fragment


def _check_db(url: str) -> None:
    """The database number of ``url`` (path ``/N`` or ``?db=N``) must be an int >= 0:
    redis-py reads a path like ``/abc`` as db 0 and fails on ``?db=abc`` only when it
    first connects."""
    parts = urlsplit(url)
    candidates = [value for name, value in parse_qsl(parts.query) if name == "db"]
    if not url.startswith("unix://"):
        path = parts.path.strip("/")
        if path:
            candidates.append(path)
    for db in candidates:
        if not db.isdigit():
            raise ConfigError(f"url names database {db!r}: it must be a number (/0, ?db=0)")


def configured_url() -> str | None:
    """The URL the environment names (``FLEETCACHE_REDIS_URL``, else ``REDIS_URL``); None
    if it names none or asks for ``embedded`` (a private server someone must start)."""
    url = _env_value()
    return None if not url or url == EMBEDDED else url


def _env_value() -> str | None:
    return os.environ.get("FLEETCACHE_REDIS_URL") or os.environ.get("REDIS_URL")


def env_url() -> str:
    """``FLEETCACHE_REDIS_URL``, else ``REDIS_URL``, else the local default.

    ``embedded`` (or nothing set, under the gunicorn hooks) asks for a private server that
    only :func:`fleetcache.gunicorn.on_starting` or ``fleetcache demo`` can start; by the
    time a worker connects they have replaced it with the server's URL.
    """
    if _env_value() == EMBEDDED:
        raise ConfigError(
            "FLEETCACHE_REDIS_URL=embedded needs a process that starts the server: the "
            "gunicorn on_starting hook (fleetcache.gunicorn) or `fleetcache demo`"
        )
    return configured_url() or DEFAULT_URL


def check_seconds(
    name: str, value: object, error: type[InvalidArgumentError] = InvalidArgumentError
) -> float:
    """Validate a duration: a finite number of seconds in [1 ms, ten years]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0.001 or value > MAX_TTL:
        raise error(f"{name} must be >= 0.001 and <= {MAX_TTL:.0f} seconds, got {value!r}")
    return float(value)


def redact_url(url: str) -> str:
    """Mask the password in ``scheme://user:password@host`` (and ``?password=``)."""
    # Up to the last "@" before the path: redis-py splits there, so "@" may be in a password.
    url = re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)
    return re.sub(r"(password=)[^&]*", r"\1***", url)


#: The name of every setting (a field of :class:`CacheConfig`).
SETTINGS = frozenset(f.name for f in dataclasses.fields(CacheConfig))


def check_setting_names(names: Iterable[str], *, shown: Callable[[str], str] = str) -> None:
    """``ConfigError`` naming every unknown setting among ``names``, and the known ones.

    A misspelt setting would otherwise silently run with the default (a misspelt namespace
    shares, and ``clear()``s, another app's keys). ``shown`` spells a name the way the
    caller's users write it (``FLEETCACHE_L1_TTL`` in a Flask config, say).
    """
    unknown = sorted(set(names) - SETTINGS)
    if unknown:
        raise ConfigError(f"unknown fleetcache settings {[shown(n) for n in unknown]}; "
                          f"known: {sorted(shown(n) for n in SETTINGS)}")
