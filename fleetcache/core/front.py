"""FleetCache: the front. Lifecycle, the L1 hit path, and delegation to the policies.

Read path: L1 -> L2 -> compute. The L1 hit is inlined here (one dict lookup, one clock
read, one comparison, one counter increment); every other path belongs to a policy object
working on this process's :class:`~fleetcache.core.tiers.Tiers`:
:class:`~fleetcache.core.readpath.ReadPath`, :class:`~fleetcache.core.writes.Writes`,
:class:`~fleetcache.core.singleflight.SingleFlight`. See README "Consistency and outages"
for the guarantees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar, overload

import redis

from ..redis.client import check_client
from ..redis.keys import KeyLayout
from ..redis.streams import Fields, StreamEntry
from . import fork
from .clock import SYSTEM_CLOCK, Clock
from .codec import Codec
from .config import CacheConfig
from .decorator import CachedFunction, default_prefix
from .errors import BackendError, ConfigError
from .flights import Fill, check_fill_options
from .notfound import NOT_FOUND
from .readpath import ReadPath
from .singleflight import SingleFlight
from .stats import CacheStats, Health
from .strategy import CacheStrategy, resolve_ttl
from .tiers import MISSING, Tiers
from .writes import Writes

T = TypeVar("T")
P = ParamSpec("P")
D = TypeVar("D")


class FleetCache:
    """A two-tier cache shared by a fleet of processes.

    Make one per application (module level is fine, before fork too) and use it from any
    thread or greenlet. Values are anything msgspec encodes as MessagePack; values served
    from L1 are the same object for every caller of a process, so treat them as read-only.
    """

    def __init__(
        self, config: CacheConfig | None = None, *, clock: Clock | None = None,
        client: redis.Redis | None = None, **options: Any,
    ) -> None:
        """``FleetCache()`` reads ``FLEETCACHE_REDIS_URL``/``REDIS_URL``; options override.

        Without an explicit URL (or ``client``) the environment is read when the first
        connection is made, not here: under gunicorn ``--preload`` the app (and this cache)
        is built before the ``on_starting`` hook has started the embedded server and
        exported its URL.

        Args:
            config: every setting at once; ``options`` then change some of them.
            clock: where TTLs and leases read time (:class:`fleetcache.testing.FakeClock`
                in tests); the system clocks by default.
            client: a ``redis.Redis`` the application already has. Its pool, timeouts and
                retries are used as they are (fleetcache's short timeouts apply only to
                clients it builds), and :meth:`close` leaves its pool open.
            options: any :class:`~fleetcache.CacheConfig` setting.
        """
        self._url_from_env = config is None and "url" not in options and client is None
        if config is None:
            config = CacheConfig(**options)
        elif options:
            config = config.replace(**options)
        self._config = config
        if client is not None and config.is_cluster:
            raise ConfigError("client= cannot serve a cluster url: the cache builds its own "
                              "client on the primary of the namespace's slot")
        self._client = None if client is None else check_client(client)
        self._clock = SYSTEM_CLOCK if clock is None else clock
        self._codec = Codec(config.max_value_bytes, config.signing_key_bytes,
                            strict_types=config.strict_types)
        self._keys = KeyLayout(config.namespace, hash_tags=config.is_cluster)
        self._closed = False
        self._reset_process_state()
        fork.register(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FleetCache:
        """A cache on ``url`` (``redis://``, ``rediss://``, ``unix://``); settings, ``clock``
        and ``client`` as keywords, as for the constructor."""
        return cls(url=url, **options)

    @classmethod
    def from_client(cls, client: redis.Redis, **options: Any) -> FleetCache:
        """A cache on an existing ``redis.Redis`` (see ``client`` in :meth:`__init__`)."""
        return cls(client=client, **options)

    def __repr__(self) -> str:
        return f"FleetCache(url={self.config.safe_url!r}, namespace={self.config.namespace!r})"

    @property
    def config(self) -> CacheConfig:
        """The settings in force (the URL resolved from the environment once connected)."""
        return self._tiers.config

    @property
    def keys(self) -> KeyLayout:
        """The names this cache uses in Redis (values, locks, channel, streams)."""
        return self._keys

    # -- process-bound state ---------------------------------------------------------------

    def _reset_process_state(self) -> None:
        tiers = self._tiers = Tiers(
            self._config, self._keys, self._codec, self._clock, client=self._client,
            url_from_env=self._url_from_env, closed=self._closed,
        )
        # Bound once: the hit paths' only lookups.
        self._l1 = tiers.l1
        self._l1_get = tiers.l1.data.get
        self._now = self._clock.monotonic
        self._counters = tiers.counters
        self._reads = ReadPath(tiers)
        self._writes = Writes(tiers)
        self._flights = SingleFlight(tiers)

    def _after_fork_in_child(self) -> None:
        # Drop (never close: the parent still uses them) the parent's connections and
        # listener; the child builds its own on first use. Its L1 starts empty: it has heard
        # no invalidation yet.
        self._reset_process_state()

    def connect(self, wait: float = 0.0) -> bool:
        """Open connections and start the listener now (gunicorn ``post_fork`` does this).

        With ``wait`` > 0, wait that long for the subscription; True if the bus is up.
        """
        bus = self._tiers.process().bus
        return bus.wait_connected(wait) if wait > 0 else bus.connected

    def close(self) -> None:
        """Stop the listener, close connections, drop L1. Further use raises."""
        self._closed = True
        self._tiers.close()

    def __enter__(self) -> FleetCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -----------------------------------------------------------------------------

    @overload
    def get(self, key: str) -> Any: ...
    @overload
    def get(self, key: str, default: D) -> Any | D: ...
    @overload
    def get(self, key: str, default: D = ..., *, type: type[T]) -> T | D: ...

    def get(self, key: str, default: Any = None, *, type: Any = None) -> Any:
        """The value of ``key``, or ``default`` on a miss (a cached None is returned as None).

        Never raises for Redis trouble: an unreachable Redis or a corrupt entry is a miss.
        ``type``: convert the value to it (a msgspec Struct, a dataclass, ``list[int]``,
        anything ``msgspec.convert`` takes), validated; ``ValueTypeError`` if it does not
        fit. L1 holds the plain form: each typed read converts (see README).
        """
        try:
            entry = self._l1_get(key)
        except TypeError:  # unhashable key: let the slow path name the problem
            entry = None
        if entry is not None and entry[1] > self._now() < self._l1.fresh_until:
            entry[2] += 1  # its hits: what keeps it in L1, and the l1_hits statistic
            return entry[0] if type is None else self._tiers.convert(key, entry[0], type)
        value = self._reads.get(key, MISSING)
        if value is MISSING:
            return default
        return value if type is None else self._tiers.convert(key, value, type)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The found values of ``keys`` (any iterable of keys, not a lone str; missing keys
        absent), with one MGET for the L1 misses."""
        return self._reads.get_many(keys)

    # -- writes ----------------------------------------------------------------------------

    def set(
        self, key: str, value: Any, *, ttl: float | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] | None = None,
    ) -> None:
        """Store ``value`` in L2 and this process's L1, and drop ``key`` from every other L1.

        ``tags``: names that :meth:`invalidate_tag` later drops this value by (a user id, a
        table: whatever the value was computed from).

        Raises ``ValueEncodeError``/``ValueTooLargeError`` before anything is written, and
        ``BackendError`` if Redis cannot be reached (the fleet could not be told).
        """
        self._writes.set(key, value, ttl, strategy, tags)

    def add(
        self, key: str, value: Any, *, ttl: float | None = None,
        strategy: CacheStrategy | None = None,
    ) -> bool:
        """Store ``value`` only if L2 holds nothing under ``key`` (SET NX); True if stored.

        Atomic fleet-wide: of concurrent ``add`` calls exactly one wins. Raises like
        :meth:`set`.
        """
        return self._writes.add(key, value, ttl, strategy)

    def set_many(
        self, mapping: Mapping[str, Any], *, ttl: float | None = None,
        strategy: CacheStrategy | None = None, tags: Iterable[str] | None = None,
    ) -> None:
        """:meth:`set` for many keys in one round trip, atomically, with one notice; every
        value carries ``tags``.

        Every key and value is checked and encoded first: a bad one raises before anything
        is written. Raises ``BackendError`` if Redis cannot be reached.
        """
        self._writes.set_many(mapping, ttl, strategy, tags)

    def incr(
        self, key: str, delta: int = 1, *, ttl: float | None = None,
        strategy: CacheStrategy | None = None,
    ) -> int:
        """Add ``delta`` to the int stored under ``key`` (absent counts as 0); the new value.

        Atomic across the fleet (compare-and-set in Redis; concurrent increments are never
        lost) and announced like :meth:`set`. Without ``ttl``/``strategy`` an existing
        entry keeps its expiry (a new one gets ``default_ttl``). Raises
        ``InvalidArgumentError`` if the key holds something other than an int,
        ``ValueEncodeError`` past 64 bits, and ``BackendError`` when Redis cannot be read
        or written: unlike :meth:`get`, it never reads an outage as "absent".
        """
        return self._writes.incr(key, delta, ttl, strategy)

    def delete(self, key: str) -> bool:
        """Remove ``key`` from L2 and from every process's L1; True if it existed in L2."""
        return self._writes.delete(key)

    def delete_many(self, keys: Iterable[str]) -> int:
        """:meth:`delete` for many keys in one round trip, with one notice; how many existed."""
        return self._writes.delete_many(keys)

    def invalidate_tag(self, tag: str) -> int:
        """Delete every value written with ``tag`` from L2 and from every process's L1;
        how many values L2 held.

        One notice for the whole tag (sent before the deletes and again after them), not
        one per key; L2 is walked with SSCAN in batches of 500, so memory stays bounded for
        any size. A key rewritten without the tag since is deleted from L2 too (a miss,
        never a stale read). A value written with the tag during the call may survive in
        L2 (it is newer than the invalidation). Raises ``BackendError`` if Redis cannot be
        reached, possibly after some batches: call it again.
        """
        return self._writes.invalidate_tag(tag)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` from L2 and every process's L1; how
        many values L2 held.

        SCAN (never KEYS) in batches of 500, with one notice before and one after, as for
        :meth:`invalidate_tag`; each process drops the matching keys from its L1 in one
        pass over it. Raises ``BackendError`` if Redis cannot be reached.
        """
        return self._writes.delete_prefix(prefix)

    def clear(self) -> int:
        """Delete every value of this namespace and flush every process's L1.

        Locks and streams are left alone. Returns how many values were deleted.
        """
        return self._writes.clear()

    # -- compute ---------------------------------------------------------------------------

    def get_or_compute(
        self, key: str, compute: Callable[[], T], *, ttl: float | None = None,
        strategy: CacheStrategy | None = None, stale_ttl: float | None = None,
        type: Any = None, negative_ttl: float | None = None,
        refresh_ahead: float | None = None, soft_timeout: float | None = None,
        tags: Iterable[str] | None = None,
    ) -> T:
        """The cached value of ``key``, or ``compute()``'s result, computed once fleet-wide.

        Threads of this process share one in-process lock per key; processes share one
        Redlock per key. Losers wait for the winner's value (woken by its notice, polling
        L2 with backoff as a fallback). If the winner dies, its lock expires after
        ``lock_timeout`` and a waiter takes over. If ``compute`` raises, the error reaches
        its caller, nothing is cached, and the next caller computes.

        ``stale_ttl``: for that many seconds after ``ttl`` the value is stale but usable:
        a caller gets it at once while one worker of the fleet recomputes it in the
        background, and if that recompute raises (or Redis is down) callers keep getting
        it (fail-safe; see ``fail_safe_throttle``). L2 keeps the value ``ttl + stale_ttl``.

        ``type``: as for :meth:`get`; a computed value that does not fit raises
        ``ValueTypeError`` and is not stored.

        ``negative_ttl``: a compute that finds nothing returns ``fleetcache.NOT_FOUND``;
        that answer is then cached this long (usually much shorter than ``ttl``) and every
        caller gets ``NOT_FOUND`` until it expires or the key is written. Without it,
        ``NOT_FOUND`` is returned and not cached.

        ``refresh_ahead``: a fraction of ``ttl`` (0.8: after 48 of 60 s) after which a read
        is still answered with the value but starts one background refresh for the fleet,
        so a key read steadily never goes stale. ``soft_timeout``: a caller that gets a
        stale (or refresh-ahead) answer first waits up to this long for this worker's
        refresh and answers with the new value if it landed.

        ``tags``: the computed value is stored with them, as by :meth:`set`.
        """
        try:
            entry = self._l1_get(key)
        except TypeError:  # unhashable key: check_key names the problem
            entry = None
        if entry is not None and entry[1] > self._now() < self._l1.fresh_until:
            entry[2] += 1
            if type is None:
                return entry[0]  # type: ignore[no-any-return]
            return self._tiers.convert(key, entry[0], type)  # type: ignore[no-any-return]
        tiers = self._tiers
        tiers.check_key(key)
        window = check_fill_options(stale_ttl, negative_ttl, refresh_ahead, soft_timeout)
        entry = self._reads.late_hit(key)
        if entry is not None:
            value = entry[0]
        else:
            value = self._flights.get_or_compute(key, Fill(
                compute, tiers.ttl(ttl, strategy), window, type, negative_ttl, refresh_ahead,
                soft_timeout, tiers.check_tags(tags)))
        if type is None or value is NOT_FOUND:
            return value  # type: ignore[no-any-return]
        return tiers.convert(key, value, type)  # type: ignore[no-any-return]

    def cached(
        self, ttl: float | None = None, *, strategy: CacheStrategy | None = None,
        key_prefix: str | None = None, stale_ttl: float | None = None,
        negative_ttl: float | None = None, refresh_ahead: float | None = None,
    ) -> Callable[[Callable[P, T]], CachedFunction[P, T]]:
        """Decorator: cache a function's result under a key built from its name and args.

        Arguments must be MessagePack-encodable (any dict keys; a tuple, a list and a set
        are different arguments). Lambdas and closures need ``key_prefix``. The
        wrapper has ``.key(*args, **kw)`` and ``.invalidate(*args, **kw)``, and works on
        methods (``self`` is not part of the key).
        """
        resolve_ttl(ttl, strategy)  # fail at decoration time, not on first call
        check_fill_options(stale_ttl, negative_ttl, refresh_ahead, None)

        def decorate(fn: Callable[P, T]) -> CachedFunction[P, T]:
            prefix = key_prefix or default_prefix(fn)
            return CachedFunction(self, fn, prefix, ttl, strategy, stale_ttl=stale_ttl,
                                  negative_ttl=negative_ttl, refresh_ahead=refresh_ahead)

        return decorate

    # -- streams ---------------------------------------------------------------------------

    def publish_to_stream(self, stream: str, fields: Fields, maxlen: int | None = None) -> str:
        """Append an entry (``str -> str`` fields) trimmed to about ``maxlen``; its id."""
        if maxlen is None:
            maxlen = self.config.stream_maxlen
        return self._tiers.process().streams.publish(stream, fields, maxlen)

    def read_stream_latest(self, stream: str, count: int = 10) -> list[StreamEntry]:
        """The newest ``count`` entries, newest first: ``[(id, {field: value}), ...]``."""
        return self._tiers.process().streams.latest(stream, count)

    def read_stream(
        self, stream: str, last_id: str = "$", count: int = 10, block_ms: int | None = None
    ) -> list[StreamEntry]:
        """Entries after ``last_id``, oldest first; with ``block_ms``, wait that long."""
        return self._tiers.process().streams.read(stream, last_id, count, block_ms)

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """This process's counters (no Redis call; O(L1 entries), for snapshots)."""
        return CacheStats.of(self._counters, self._l1.hits())

    def health(self) -> Health:
        """PING Redis and report round trip, bus state and L1 size. Never raises for Redis."""
        proc = self._tiers.process()
        start = time.perf_counter()
        try:
            proc.l2.ping()
        except BackendError as exc:
            return Health(False, None, proc.bus.connected, len(self._l1), os.getpid(),
                          str(exc))
        latency = (time.perf_counter() - start) * 1000
        return Health(True, round(latency, 3), proc.bus.connected, len(self._l1), os.getpid())
