"""FleetCache: the front that composes L1, L2, the invalidation bus and the locks.

Read path: L1 -> L2 -> compute. Writes go to L2 together with their invalidation notice,
then to this process's L1. See README "Consistency and outages" for the guarantees.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from . import _fork
from .codec import Codec
from .config import CacheConfig, check_seconds, env_url
from .decorator import CachedFunction
from .errors import (
    BackendError,
    CacheClosedError,
    CorruptValueError,
    InvalidArgumentError,
    InvalidKeyError,
)
from .l1 import Entry, LocalStore, monotonic
from .locks import FleetLock
from .process import ProcessState
from .stats import CacheStats, Counters, Health
from .strategy import CacheStrategy
from .streams import Fields, StreamEntry

logger = logging.getLogger("fleetcache")

T = TypeVar("T")
P = ParamSpec("P")
D = TypeVar("D")

_MISSING: Any = object()
_TIMED_OUT: Any = object()
_WAIT_FIRST = 0.001  # first poll of a waiter; doubles up to _WAIT_CAP
_WAIT_CAP = 0.05


class FleetCache:
    """A two-tier cache shared by a fleet of processes.

    Make one per application (module level is fine, before fork too) and use it from any
    thread or greenlet. Values are anything msgspec encodes as MessagePack; values served
    from L1 are the same object for every caller of a process, so treat them as read-only.
    """

    def __init__(self, config: CacheConfig | None = None, **options: Any) -> None:
        """``FleetCache()`` reads ``FLEETCACHE_REDIS_URL``/``REDIS_URL``; options override.

        Without an explicit URL the environment is read when the first connection is made,
        not here: under gunicorn ``--preload`` the app (and this cache) is built before the
        ``on_starting`` hook has started the embedded server and exported its URL.
        """
        self._url_from_env = config is None and "url" not in options
        if config is None:
            config = CacheConfig(**options)
        elif options:
            config = config.replace(**options)
        self.config = config
        self._codec = Codec(config.max_value_bytes, config.signing_key_bytes)
        self._closed = False
        self._reset_process_state()
        _fork.register(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FleetCache:
        """A cache on ``url`` (``redis://``, ``rediss://``, ``unix://``); options as keywords."""
        return cls(CacheConfig(url=url, **options))

    def __repr__(self) -> str:
        return f"FleetCache(url={self.config.safe_url!r}, namespace={self.config.namespace!r})"

    # -- process-bound state ---------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._l1 = LocalStore(self.config.l1_capacity)
        self._l1_get = self._l1.data.get  # bound once: the hit path's only lookup
        self._counters = Counters()
        self._proc: ProcessState | None = None
        self._init_lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        # Drop (never close: the parent still uses them) the parent's connections and
        # listener; the child builds its own on first use. Its L1 starts empty: it has heard
        # no invalidation yet.
        self._reset_process_state()

    def _process(self) -> ProcessState:
        proc = self._proc
        if proc is None:
            with self._init_lock:
                if self._closed:
                    raise CacheClosedError("this FleetCache was closed")
                proc = self._proc
                if proc is None:
                    if self._url_from_env:
                        self.config = self.config.replace(url=env_url())
                    proc = self._proc = ProcessState(
                        self.config, self._codec, self._counters,
                        on_invalidate=self._on_remote_invalidation, on_flush=self._flush_l1,
                        on_lease=self._lease_l1,
                    )
        return proc

    def connect(self, wait: float = 0.0) -> bool:
        """Open connections and start the listener now (gunicorn ``post_fork`` does this).

        With ``wait`` > 0, wait that long for the subscription; True if the bus is up.
        """
        bus = self._process().bus
        return bus.wait_connected(wait) if wait > 0 else bus.connected

    def close(self) -> None:
        """Stop the listener, close connections, drop L1. Further use raises."""
        with self._init_lock:
            self._closed = True
            proc, self._proc = self._proc, None
        self._flush_l1()
        if proc is not None:
            proc.close()

    def __enter__(self) -> FleetCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -----------------------------------------------------------------------------

    @overload
    def get(self, key: str) -> Any: ...
    @overload
    def get(self, key: str, default: D) -> Any | D: ...

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` on a miss (a cached None is returned as None).

        Never raises for Redis trouble: an unreachable Redis or a corrupt entry is a miss.
        """
        try:
            entry = self._l1_get(key)
        except TypeError:  # unhashable key: let the slow path name the problem
            entry = None
        if entry is not None and entry[1] > monotonic() < self._l1.fresh_until:
            self._counters.l1_hits += 1
            return entry[0]
        return self._get_slow(key, default)

    def _late_hit(self, key: str) -> Entry | None:
        """A live L1 entry held back only by the listener's lease (the listener is late):
        wait for it to catch up, then look again. None if there is no such entry."""
        entry = self._l1_get(key)
        if entry is None or entry[1] <= (now := monotonic()):
            return None
        if now >= self._l1.fresh_until and not self._await_listener():
            return None
        entry = self._l1.get(key)
        if entry is not None:
            self._counters.l1_hits += 1
        return entry

    def _await_listener(self) -> bool:
        """Wait up to ``max_listener_lag`` for the listener to renew L1's lease.

        Under gevent, greenlets serving L1 hits never yield and the listener waits its
        turn; waiting here yields, so it gets it, and costs no Redis round trip.
        """
        proc = self._proc
        if proc is None:
            return False
        self._counters.listener_waits += 1
        return proc.bus.await_lease(self.config.max_listener_lag)

    def _get_slow(self, key: str, default: Any) -> Any:
        self._check_key(key)
        entry = self._late_hit(key)
        if entry is not None:
            return entry[0]
        proc = self._process()
        seq = self._l1.seq
        try:
            blob = proc.l2.get(key)
        except BackendError as exc:
            self._read_failed(exc)
            blob = None
        value = self._accept(key, blob, seq)
        if value is _MISSING:
            self._counters.misses += 1
            return default
        self._counters.l2_hits += 1
        return value

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The found values of ``keys`` (missing keys absent), with one MGET for the L1 misses."""
        found: dict[str, Any] = {}
        cold: list[str] = []
        l1_get = self._l1_get
        now = monotonic()
        fresh_until = self._l1.fresh_until
        for key in keys:
            self._check_key(key)
            entry = l1_get(key)
            if entry is not None and entry[1] > now < fresh_until:
                found[key] = entry[0]
            else:
                cold.append(key)
        counters = self._counters
        counters.l1_hits += len(keys) - len(cold)
        if cold and now >= fresh_until:  # some may be held back only by a late listener
            held, cold = cold, []
            for key in held:
                entry = self._late_hit(key)  # waits once at most: then the lease is fresh
                if entry is not None:
                    found[key] = entry[0]
                else:
                    cold.append(key)
        if not cold:
            return found
        proc = self._process()
        seq = self._l1.seq
        try:
            blobs: list[bytes | None] = proc.l2.get_many(cold)
        except BackendError as exc:
            self._read_failed(exc)
            blobs = [None] * len(cold)
        promote: list[tuple[str, Any, float]] = []
        l1_ttl = self._l1_ttl()
        wall = time.time()
        for key, blob in zip(cold, blobs, strict=True):
            decoded = self._decode(key, blob)
            if decoded is None:
                counters.misses += 1
                continue
            value, expires_at_ms = decoded
            found[key] = value
            counters.l2_hits += 1
            ttl = min(l1_ttl, expires_at_ms / 1000.0 - wall)
            if ttl > 0:
                promote.append((key, value, ttl))
        counters.promotions += self._l1.store_many_if_unchanged(promote, seq)
        return found

    def _accept(self, key: str, blob: bytes | None, seq: int) -> Any:
        """Decode an L2 reply and promote it into L1 if no invalidation raced the read."""
        decoded = self._decode(key, blob)
        if decoded is None:
            return _MISSING
        value, expires_at_ms = decoded
        ttl = min(self._l1_ttl(), expires_at_ms / 1000.0 - time.time())
        if ttl > 0 and self._l1.store_if_unchanged(key, value, ttl, seq):
            self._counters.promotions += 1
        return value

    def _decode(self, key: str, blob: bytes | None) -> tuple[Any, int] | None:
        """``(value, expires_at_ms)`` of an L2 reply; None if absent, corrupt or foreign."""
        if blob is None:
            return None
        try:
            return self._codec.decode(blob, key)
        except CorruptValueError as exc:
            self._counters.corrupt_values += 1
            if self._counters.corrupt_values == 1:
                logger.warning("fleetcache: corrupt or foreign value under key %r read as a "
                               "miss (%s); further ones are only counted", key, exc)
            return None

    def _l1_ttl(self) -> float:
        """L1 life for new entries: short while invalidations cannot reach us."""
        proc = self._proc
        if proc is not None and proc.bus.connected:
            return self.config.l1_ttl
        return min(self.config.l1_ttl, self.config.degraded_l1_ttl)

    def _read_failed(self, exc: BaseException) -> None:
        counters = self._counters
        counters.redis_errors += 1
        if counters.redis_errors & (counters.redis_errors - 1) == 0:  # 1st, 2nd, 4th, 8th...
            logger.warning("fleetcache: Redis read failed, serving as a miss (%d so far): %s",
                           counters.redis_errors, exc)

    # -- writes ----------------------------------------------------------------------------

    def set(
        self, key: str, value: Any, *, ttl: float | None = None,
        strategy: CacheStrategy | None = None,
    ) -> None:
        """Store ``value`` in L2 and this process's L1, and drop ``key`` from every other L1.

        Raises ``ValueEncodeError``/``ValueTooLargeError`` before anything is written, and
        ``BackendError`` if Redis cannot be reached (the fleet could not be told).
        """
        seconds, blob = self._prepare_write(key, value, ttl, strategy)
        proc = self._process()
        with proc.writes.hold(key):
            seq = self._l1.seq
            try:
                proc.l2.set_and_publish(key, blob, int(seconds * 1000), proc.bus.message(key))
            except BackendError:
                self._l1.invalidate(key)  # unknown outcome: never keep the old value locally
                raise
            self._counters.invalidations_sent += 1
            # A newer write from elsewhere may have landed (and its notice been applied)
            # between our SET and its reply: then ours is not the current value.
            self._l1.put(key, value, min(seconds, self._l1_ttl()), seq)

    def _prepare_write(
        self, key: str, value: Any, ttl: float | None, strategy: CacheStrategy | None
    ) -> tuple[float, bytes]:
        """Validate and encode before anything is written: ``(ttl seconds, blob)``."""
        self._check_key(key)
        seconds = self._resolve_ttl(ttl, strategy)
        return seconds, self._encode(key, value, seconds)

    def _encode(self, key: str, value: Any, ttl: float) -> bytes:
        return self._codec.encode(key, value, int((time.time() + ttl) * 1000))

    def add(
        self, key: str, value: Any, *, ttl: float | None = None,
        strategy: CacheStrategy | None = None,
    ) -> bool:
        """Store ``value`` only if L2 holds nothing under ``key`` (SET NX); True if stored.

        Atomic fleet-wide: of concurrent ``add`` calls exactly one wins. Raises like
        :meth:`set`.
        """
        seconds, blob = self._prepare_write(key, value, ttl, strategy)
        proc = self._process()
        with proc.writes.hold(key):
            seq = self._l1.seq
            # A "filled" notice: where L2 held nothing, no L1 can hold a replaced value.
            stored = proc.l2.set_and_publish(
                key, blob, int(seconds * 1000), proc.bus.message(key, filled=True),
                only_if_absent=True,
            )
            if stored:
                self._l1.store_if_unchanged(key, value, min(seconds, self._l1_ttl()), seq)
        return stored

    def set_many(
        self, mapping: Mapping[str, Any], *, ttl: float | None = None,
        strategy: CacheStrategy | None = None,
    ) -> None:
        """:meth:`set` for many keys in one round trip, atomically, with one notice.

        Every key and value is checked and encoded first: a bad one raises before anything
        is written. Raises ``BackendError`` if Redis cannot be reached.
        """
        seconds = self._resolve_ttl(ttl, strategy)
        items = list(mapping.items())
        blobs = []
        for key, value in items:
            self._check_key(key)
            blobs.append((key, self._encode(key, value, seconds)))
        if not items:
            return
        proc = self._process()
        seq = self._l1.seq
        keys = [key for key, _ in items]
        try:
            proc.l2.set_many_and_publish(blobs, int(seconds * 1000), proc.bus.message(keys))
        except BackendError:
            for key in keys:
                self._l1.invalidate(key)  # unknown outcome: never keep old values locally
            raise
        self._counters.invalidations_sent += len(items)
        self._l1.put_many(items, min(seconds, self._l1_ttl()), seq)

    def delete(self, key: str) -> bool:
        """Remove ``key`` from L2 and from every process's L1; True if it existed in L2."""
        self._check_key(key)
        proc = self._process()
        with proc.writes.hold(key):
            try:
                existed = proc.l2.delete_and_publish([key], proc.bus.message(key)) > 0
            finally:
                # After the DEL, not before: a read of ours that raced the DEL may have
                # promoted the old value; this drops it and voids any still in flight.
                self._l1.invalidate(key)
            self._counters.invalidations_sent += 1
        return existed

    def delete_many(self, keys: Sequence[str]) -> int:
        """:meth:`delete` for many keys in one round trip, with one notice; how many existed."""
        keys = list(keys)
        for key in keys:
            self._check_key(key)
        if not keys:
            return 0
        proc = self._process()
        try:
            existed = proc.l2.delete_and_publish(keys, proc.bus.message(keys))
        finally:
            for key in keys:  # after the DEL, as in delete()
                self._l1.invalidate(key)
        self._counters.invalidations_sent += len(keys)
        return existed

    def clear(self) -> int:
        """Delete every value of this namespace and flush every process's L1.

        Locks and streams are left alone. Returns how many values were deleted.
        """
        proc = self._process()
        try:
            deleted = proc.l2.clear_and_publish(proc.bus.message(None))
        finally:
            self._flush_l1()  # after the deletes, for the same reason as in delete()
        self._counters.invalidations_sent += 1
        return deleted

    # -- compute ---------------------------------------------------------------------------

    def get_or_compute(
        self, key: str, compute: Callable[[], T], *, ttl: float | None = None,
        strategy: CacheStrategy | None = None,
    ) -> T:
        """The cached value of ``key``, or ``compute()``'s result, computed once fleet-wide.

        Threads of this process share one in-process lock per key; processes share one
        Redlock per key. Losers wait for the winner's value (woken by its notice, polling
        L2 with backoff as a fallback). If the winner dies, its lock expires after
        ``lock_timeout`` and a waiter takes over. If ``compute`` raises, the error reaches
        its caller, nothing is cached, and the next caller computes.
        """
        try:
            entry = self._l1_get(key)
        except TypeError:  # unhashable key: _check_key names the problem
            entry = None
        if entry is not None and entry[1] > monotonic() < self._l1.fresh_until:
            self._counters.l1_hits += 1
            return entry[0]  # type: ignore[no-any-return]
        self._check_key(key)
        entry = self._late_hit(key)
        if entry is not None:
            return entry[0]  # type: ignore[no-any-return]
        seconds = self._resolve_ttl(ttl, strategy)
        proc = self._process()
        with proc.flights.hold(key):
            entry = self._l1.get(key)  # filled by the thread we waited for?
            if entry is not None:
                self._counters.l1_hits += 1
                return entry[0]  # type: ignore[no-any-return]
            return self._fill(proc, key, compute, seconds)

    def _fill(self, proc: ProcessState, key: str, compute: Callable[[], T], ttl: float) -> T:
        # A holder that dies lets its lock expire after lock_timeout and a waiter takes over;
        # a chain of holders (each dying) is waited out at most this long in total.
        give_up = monotonic() + 3 * self.config.lock_timeout
        first = True  # only the first look at L2 counts as this lookup's hit or miss
        while True:
            lock = FleetLock(proc.client, proc.lock_prefix + key, self.config.lock_timeout)
            seq = self._l1.seq
            try:
                blob, won = proc.l2.fetch_or_lock(key, lock)
            except BackendError as exc:  # Redis down: compute here, cache in L1 only
                self._read_failed(exc)
                return self._compute_unlocked(key, compute, ttl)
            value = _MISSING if won else self._accept(key, blob, seq)
            if first:
                if value is _MISSING:
                    self._counters.misses += 1
                else:
                    self._counters.l2_hits += 1
                first = False
            if won:
                return self._compute_locked(proc, lock, key, compute, ttl, seq=seq)
            if value is not _MISSING:
                return value  # type: ignore[no-any-return]
            if blob is not None:
                # Corrupt or foreign bytes would make every SET NX fail, and every call
                # recompute, for as long as they live: drop them (only them), then compete.
                try:
                    proc.l2.discard(key, blob)
                except BackendError as exc:
                    self._read_failed(exc)
                    return self._compute_unlocked(key, compute, ttl)
                continue
            value = self._wait_for_value(proc, key, lock.key, give_up)
            if value is _TIMED_OUT:
                logger.warning("fleetcache: the fleet lock for %r outlived lock_timeout; "
                               "computing without it", key)
                return self._compute_unlocked(key, compute, ttl)
            if value is not _MISSING:
                return value  # type: ignore[no-any-return]
            # The lock is free (holder done without storing, or dead): try to take it.

    def _compute_locked(
        self, proc: ProcessState, lock: FleetLock, key: str, compute: Callable[[], T],
        ttl: float, *, seq: int,
    ) -> T:
        """Holding the fleet lock, taken when L2 had no value (atomically, at ``seq``)."""
        released = False
        try:
            value = self._run(compute)
            released = self._store_computed(proc, lock, key, value, ttl, seq=seq)
            return value
        finally:
            if not released:
                lock.release()

    def _compute_unlocked(self, key: str, compute: Callable[[], T], ttl: float) -> T:
        """Degraded path: compute without the fleet lock; keep the value in L1 only."""
        seq = self._l1.seq
        value = self._run(compute)
        self._l1.store_if_unchanged(key, value, min(ttl, self._l1_ttl()), seq)
        return value

    def _run(self, compute: Callable[[], T]) -> T:
        counters = self._counters
        counters.computes += 1
        counters.in_flight += 1
        try:
            return compute()
        finally:
            counters.in_flight -= 1

    def _store_computed(
        self, proc: ProcessState, lock: FleetLock, key: str, value: Any, ttl: float, *,
        seq: int,
    ) -> bool:
        """Store (SET NX), release ``lock`` and wake waiters, in one script; True if it ran.

        A failure to store is logged; the computed value is still returned to the caller.
        """
        blob = self._encode(key, value, ttl)
        try:
            # NX: a set() that landed during the compute is newer than what we computed.
            stored = proc.l2.store_fill(key, blob, int(ttl * 1000), lock,
                                        proc.bus.message(key, filled=True))
        except BackendError as exc:
            self._read_failed(exc)
            return False
        if stored:
            self._l1.store_if_unchanged(key, value, min(ttl, self._l1_ttl()), seq)
        return True

    def _wait_for_value(self, proc: ProcessState, key: str, lock_key: str, give_up: float) -> Any:
        """Wait for another process's compute.

        Returns the value; _MISSING once the lock is free (or Redis failed); _TIMED_OUT when
        one holder kept the lock past its auto-release time (plus two polls), or at
        ``give_up``. Woken by the winner's fill notice; polls value and lock together in one
        MGET with backoff, as a fallback for a lost notice.
        """
        self._counters.lock_waits += 1
        event = proc.waiters[key] = threading.Event()
        delay = _WAIT_FIRST
        holder: bytes | None = None
        deadline = give_up
        try:
            while True:
                event.wait(min(delay, max(0.0, deadline - monotonic())))
                event.clear()
                delay = min(delay * 2, _WAIT_CAP)
                seq = self._l1.seq
                blob, current = proc.l2.get_and_check_lock(key, lock_key)
                value = self._accept(key, blob, seq)
                if value is not _MISSING or current is None:
                    return value
                now = monotonic()
                if current != holder:  # a new holder: its lock expires within lock_timeout
                    holder = current
                    deadline = min(give_up, now + self.config.lock_timeout + 2 * _WAIT_CAP)
                if now >= deadline:
                    return _TIMED_OUT
        except BackendError as exc:
            self._read_failed(exc)
            return _MISSING
        finally:
            proc.waiters.pop(key, None)

    def cached(
        self, ttl: float | None = None, *, strategy: CacheStrategy | None = None,
        key_prefix: str | None = None,
    ) -> Callable[[Callable[P, T]], CachedFunction[P, T]]:
        """Decorator: cache a function's result under a key built from its name and args.

        Arguments must be MessagePack-encodable. The wrapper has ``.key(*args, **kw)`` and
        ``.invalidate(*args, **kw)``.
        """
        if ttl is not None or strategy is not None:
            self._resolve_ttl(ttl, strategy)  # fail at decoration time, not on first call

        def decorate(fn: Callable[P, T]) -> CachedFunction[P, T]:
            prefix = key_prefix or f"fn:{fn.__module__}.{fn.__qualname__}"
            return CachedFunction(self, fn, prefix, ttl, strategy)

        return decorate

    # -- remote notices --------------------------------------------------------------------

    def _on_remote_invalidation(self, key: str) -> None:
        self._l1.invalidate(key)
        proc = self._proc
        if proc is not None:
            proc.wake_waiter(key)  # a set() elsewhere also ends a wait for the key

    def _flush_l1(self) -> None:
        self._l1.clear()

    def _lease_l1(self, until: float) -> None:
        self._l1.fresh_until = until

    # -- streams ---------------------------------------------------------------------------

    def publish_to_stream(self, stream: str, fields: Fields, maxlen: int | None = None) -> str:
        """Append an entry (``str -> str`` fields) trimmed to about ``maxlen``; its id."""
        if maxlen is None:
            maxlen = self.config.stream_maxlen
        return self._process().streams.publish(stream, fields, maxlen)

    def read_stream_latest(self, stream: str, count: int = 10) -> list[StreamEntry]:
        """The newest ``count`` entries, newest first: ``[(id, {field: value}), ...]``."""
        return self._process().streams.latest(stream, count)

    def read_stream(
        self, stream: str, last_id: str = "$", count: int = 10, block_ms: int | None = None
    ) -> list[StreamEntry]:
        """Entries after ``last_id``, oldest first; with ``block_ms``, wait that long."""
        return self._process().streams.read(stream, last_id, count, block_ms)

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """This process's counters (cheap; no Redis call)."""
        return CacheStats.of(self._counters)

    def health(self) -> Health:
        """PING Redis and report round trip, bus state and L1 size. Never raises for Redis."""
        proc = self._process()
        start = time.perf_counter()
        try:
            proc.l2.ping()
        except BackendError as exc:
            return Health(False, None, proc.bus.connected, len(self._l1), os.getpid(),
                          str(exc))
        latency = (time.perf_counter() - start) * 1000
        return Health(True, round(latency, 3), proc.bus.connected, len(self._l1), os.getpid())

    # -- validation ------------------------------------------------------------------------

    def _check_key(self, key: object) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidKeyError(f"cache keys are non-empty str, got {key!r:.80}")
        if len(key) > self.config.max_key_length:
            raise InvalidKeyError(
                f"key of {len(key)} characters exceeds max_key_length="
                f"{self.config.max_key_length}: {key[:40]!r}..."
            )

    def _resolve_ttl(self, ttl: float | None, strategy: CacheStrategy | None) -> float:
        if ttl is not None and strategy is not None:
            raise InvalidArgumentError("give ttl or strategy, not both")
        if strategy is not None:
            if not isinstance(strategy, CacheStrategy):
                raise InvalidArgumentError(f"strategy must be a CacheStrategy, got {strategy!r}")
            return strategy.ttl
        if ttl is None:
            return self.config.default_ttl
        return check_seconds("ttl", ttl)
