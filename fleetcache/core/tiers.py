"""One process's two tiers of a cache: its L1, its counters, and its way to L2.

The read path, the writes and single-flight all work on one :class:`Tiers`; the front
builds a new one in a forked child (an empty L1, fresh counters, no connections yet: the
child has heard no invalidation). The helpers here are the rules those three share: how
long a new L1 entry may live, how an L2 reply becomes a value (and an L1 entry), how keys
and TTLs are checked, how a failed read is reported.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable
from typing import Any

import msgspec
import redis

from ..redis.keys import KeyLayout
from .clock import Clock
from .codec import NO_TAGS, Codec, Decoded
from .config import MAX_TTL, CacheConfig, env_url
from .errors import (
    CacheClosedError,
    CorruptValueError,
    InvalidArgumentError,
    InvalidKeyError,
    ValueTypeError,
)
from .l1 import LocalStore
from .notfound import NOT_FOUND
from .process import ProcessState
from .stats import Counters
from .strategy import CacheStrategy, resolve_ttl

logger = logging.getLogger("fleetcache")

#: "Nothing here": distinct from a cached None.
MISSING: Any = object()


class Tiers:
    """L1, counters and the lazily built :class:`ProcessState` of one cache in one process."""

    __slots__ = ("_client", "_init_lock", "_proc", "_url_from_env", "clock", "closed",
                 "codec", "config", "counters", "keys", "l1", "versioned")

    def __init__(
        self, config: CacheConfig, keys: KeyLayout, codec: Codec, clock: Clock, *,
        client: redis.Redis | None, url_from_env: bool, closed: bool,
    ) -> None:
        self.config = config
        self.keys = keys
        self.codec = codec
        self.clock = clock
        self.counters = Counters()
        #: Whether writes send their values (``sync_strategy="update"``): then L1 entries
        #: carry versions, and reads fetch the position with their values.
        self.versioned = config.sync_strategy == "update"
        self.l1 = LocalStore(config.l1_capacity, clock, self.counters,
                             versioned=self.versioned)
        self.closed = closed
        self._client = client
        self._url_from_env = url_from_env
        self._proc: ProcessState | None = None
        self._init_lock = threading.Lock()

    # -- the process-bound connections -------------------------------------------------

    @property
    def current(self) -> ProcessState | None:
        """The connections if they were opened (never opens them)."""
        return self._proc

    def process(self) -> ProcessState:
        """The connections and listener, opened on first use."""
        proc = self._proc
        if proc is None:
            with self._init_lock:
                if self.closed:
                    raise CacheClosedError("this FleetCache was closed")
                proc = self._proc
                if proc is None:
                    if self._url_from_env:
                        # Read now, not at construction: under gunicorn --preload the app is
                        # built before on_starting has exported the embedded server's URL.
                        self.config = self.config.replace(url=env_url())
                    proc = self._proc = ProcessState(
                        self.config, self.keys, self.codec, self.clock, self.counters,
                        client=self._client, receiver=self,
                    )
        return proc

    def close(self) -> None:
        """Refuse further use, drop L1, stop the listener and close connections."""
        with self._init_lock:
            self.closed = True
            proc, self._proc = self._proc, None
        self.l1.clear()
        if proc is not None:
            proc.close()

    # -- what the invalidation listener acts on (a BusReceiver) --------------------------

    def invalidate(self, key: str) -> None:
        """Another process changed ``key``: drop our copy, end any wait for it, and forget
        any refresh throttle on it (the value it was about is gone)."""
        self.l1.invalidate(key)
        proc = self._proc
        if proc is not None:
            proc.wake_waiter(key)
            proc.throttled.pop(key, None)

    def update(self, key: str, blob: bytes, version: int) -> None:
        """Another process wrote ``blob`` under ``key`` at ``version``
        (``sync_strategy="update"``): replace our older copy, if we hold one."""
        decoded = self.decode(key, blob)
        left = self.servable_left(decoded, self.clock.time())
        if left <= 0:  # unreadable, or not a value plain reads serve: drop ours
            self.invalidate(key)
            return
        value, _, tags = decoded  # type: ignore[misc]
        if self.l1.update(key, value, min(self.l1_ttl(), left), version, tags):
            self.counters.l1_updates += 1
        self._dropped((key,))

    def notice(self, key: str, blob: bytes | None) -> bytes | None:
        """What to publish for a write of ``blob`` under ``key`` if it is not the plain
        invalidation: under ``sync_strategy="update"``, the notice carrying the value
        (when it fits ``sync_value_limit``). None otherwise."""
        proc = self._proc
        if (not self.versioned or blob is None or proc is None
                or len(blob) > self.config.sync_value_limit):
            return None
        return proc.bus.message(key, blob)

    def invalidate_tag(self, tag: str) -> None:
        """Another process invalidated ``tag``: drop every entry carrying it."""
        self._dropped(self.l1.invalidate_tag(tag))

    def invalidate_prefix(self, prefix: str) -> None:
        """Another process deleted every key starting with ``prefix``."""
        self._dropped(self.l1.invalidate_prefix(prefix))

    def _dropped(self, keys: Iterable[str]) -> None:
        proc = self._proc
        if proc is not None:
            for key in keys:
                proc.wake_waiter(key)
                proc.throttled.pop(key, None)

    def flush(self, gap: bool) -> None:
        """Drop L1 (see :meth:`LocalStore.clear`)."""
        self.l1.clear(gap)

    def lease(self, until: float) -> None:
        """Serve L1 hits only before ``until``."""
        self.l1.lease(until)

    def suspend(self) -> None:
        """Hold L1 back until the listener has replayed what it missed."""
        self.l1.suspend()

    def resume(self) -> None:
        """Serve L1 again: the replay is done."""
        self.l1.resume()

    # -- rules shared by reads, writes and computes ------------------------------------

    def await_listener(self) -> bool:
        """Renew L1's lease if the listener is drained, else wait up to
        ``max_listener_lag`` for it to renew; whether the lease holds again (then L1 may
        serve again). Only a wait counts in ``listener_waits``.

        Under gevent, greenlets serving L1 hits never yield and the listener waits its
        turn; waiting here yields, so it gets it, and costs no Redis round trip.
        """
        proc = self._proc
        if proc is None:
            return False
        if proc.bus.renew_if_drained():  # the lease ran out while nothing was to apply
            return True
        self.counters.listener_waits += 1
        return proc.bus.await_lease(self.config.max_listener_lag)

    def l1_ttl(self) -> float:
        """L1 life for new entries: short while invalidations cannot reach us."""
        proc = self._proc
        if proc is not None and proc.bus.connected:
            return self.config.l1_ttl
        return min(self.config.l1_ttl, self.config.degraded_l1_ttl)

    def accept(self, key: str, blob: bytes | None, seq: int, version: int = 0) -> Any:
        """Decode an L2 reply and promote it into L1 if no invalidation raced the read;
        :data:`MISSING` if there was nothing usable. A value past its fresh time (kept in
        L2 for a stale window) is :data:`MISSING` here: only ``get_or_compute`` with a
        ``stale_ttl`` serves it. ``version``: what the read is at least as new as."""
        decoded = self.decode(key, blob)
        left = self.servable_left(decoded, self.clock.time())
        if left <= 0:
            return MISSING
        value = decoded[0]  # type: ignore[index]
        if self.keep(key, value, left, seq, tags=decoded[2],  # type: ignore[index]
                     version=version):
            self.counters.promotions += 1
        return value

    @staticmethod
    def convert(key: str, value: Any, expected: Any) -> Any:
        """``value`` (as decoded from MessagePack) converted to ``expected`` and validated by
        msgspec; ``ValueTypeError`` naming the key and the type if it does not fit."""
        try:
            return msgspec.convert(value, expected)
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            raise ValueTypeError(key, expected, str(exc)) from exc

    @staticmethod
    def servable_left(decoded: Decoded | None, wall: float) -> float:
        """Seconds a decoded L2 reply may still serve a plain read at ``wall``: <= 0 for
        nothing, a stale value (only ``get_or_compute`` with ``stale_ttl`` serves those) or
        a cached ``NOT_FOUND`` (a miss for plain reads)."""
        if decoded is None or decoded[0] is NOT_FOUND:
            return -1.0
        return decoded[1] / 1000.0 - wall

    def fresh_left(self, expires_at_ms: int) -> float:
        """Seconds until a value stored to expire at ``expires_at_ms`` goes stale."""
        return expires_at_ms / 1000.0 - self.clock.time()

    def keep(self, key: str, value: Any, left: float, seq: int, *, stale_ttl: float = 0.0,
             ahead: float = 0.0, written: bool = False,
             tags: tuple[str, ...] = NO_TAGS, version: int = 0) -> bool:
        """Put a value read (or computed) at ``seq`` into L1, with ``left`` seconds of
        freshness (negative: stale already) and a ``stale_ttl`` window after that, unless an
        invalidation raced it; whether L1 took it. With ``ahead`` (refresh-ahead), L1's
        hits end that long before the fresh end: from then on the stale path serves the
        entry and asks for a refresh. ``written``: this process just stored ``value`` in L2
        (a fill or a refresh): kept as its own write is, so that a concurrent read of the
        older value cannot promote it over this one. ``tags``: the value's, so that an
        ``invalidate_tag`` notice finds it; ``version``: how new it is (0: unknown), so
        that an update notice replaces it only with a newer value."""
        ttl = min(self.l1_ttl(), left - ahead)
        stale_for = left + stale_ttl - ttl if stale_ttl > 0 or ahead > 0 else 0.0
        if ttl + stale_for <= 0:
            return False
        if written:
            return self.l1.put(key, value, ttl, seq, stale_for, tags=tags, version=version)
        return self.l1.store_if_unchanged(key, value, ttl, seq, stale_for, tags=tags,
                                          version=version)

    def decode(self, key: str, blob: bytes | None) -> Decoded | None:
        """``(value, expires_at_ms, tags)`` of an L2 reply; None if absent, corrupt or
        foreign."""
        if blob is None:
            return None
        try:
            return self.codec.decode(blob, key)
        except CorruptValueError as exc:
            self._corrupt(key, exc)
            return None

    def decode_many(self, keys: list[str], blobs: list[bytes | None]) -> list[Decoded | None]:
        """:meth:`decode` of a bulk reply, in one loop (a ``get_many`` of 100 keys pays one
        call here, not 100)."""
        decode = self.codec.decode
        out: list[Decoded | None] = []
        for key, blob in zip(keys, blobs, strict=True):
            if blob is None:
                out.append(None)
                continue
            try:
                out.append(decode(blob, key))
            except CorruptValueError as exc:
                self._corrupt(key, exc)
                out.append(None)
        return out

    def _corrupt(self, key: str, exc: CorruptValueError) -> None:
        self.counters.corrupt_values += 1
        if self.counters.corrupt_values == 1:
            logger.warning("fleetcache: corrupt or foreign value under key %r read as a "
                           "miss (%s); further ones are only counted", key, exc)

    def encode(self, key: str, value: Any, ttl: float,
               tags: tuple[str, ...] = NO_TAGS) -> tuple[bytes, Any]:
        """Envelope bytes for ``value`` expiring ``ttl`` seconds from now (wall clock), and
        the value every reader will decode from them (what the writer serves too)."""
        return self.codec.encode_and_read_back(
            key, value, int((self.clock.time() + ttl) * 1000), tags)

    def read_failed(self, exc: BaseException) -> None:
        """Count a failed read (served as a miss) and log it, rate-limited."""
        counters = self.counters
        counters.redis_errors += 1
        if counters.redis_errors & (counters.redis_errors - 1) == 0:  # 1st, 2nd, 4th, 8th...
            logger.warning("fleetcache: Redis read failed, serving as a miss (%d so far): %s",
                           counters.redis_errors, exc)

    def check_key(self, key: object) -> None:
        """``InvalidKeyError`` unless ``key`` is a non-empty str within ``max_key_length``
        that encodes as UTF-8 (what Redis stores)."""
        self.check_name("key", key)

    def check_name(self, what: str, name: object) -> None:
        """:meth:`check_key` for a key, a tag or a prefix (``what`` names it)."""
        if not isinstance(name, str) or not name:
            raise InvalidKeyError(f"cache {what}s are non-empty str, got {name!r:.80}")
        if len(name) > self.config.max_key_length:
            raise InvalidKeyError(
                f"{what} of {len(name)} characters exceeds max_key_length="
                f"{self.config.max_key_length}: {name[:40]!r}..."
            )
        if not name.isascii():
            try:
                name.encode()
            except UnicodeEncodeError:  # a lone surrogate: Redis keys are UTF-8 bytes
                raise InvalidKeyError(f"{what} is not valid UTF-8 text: {name!r:.80}") from None

    def check_tags(self, tags: Iterable[str] | None) -> tuple[str, ...]:
        """``tags`` of a write as a tuple without duplicates, each a non-empty str within
        ``max_key_length``; a lone ``str`` is refused (its characters are no tags)."""
        if tags is None:
            return NO_TAGS
        if isinstance(tags, str | bytes):
            raise InvalidArgumentError(
                f"give a list of tags, not a single {type(tags).__name__}: {tags!r:.40}")
        try:
            found = tuple(dict.fromkeys(tags))
        except TypeError:
            raise InvalidArgumentError(
                f"tags must be an iterable of str, got {type(tags).__name__}") from None
        for tag in found:
            self.check_name("tag", tag)
        return found

    def key_list(self, keys: Iterable[str]) -> list[str]:
        """``keys`` of a bulk call as a sequence, each checked; a lone ``str`` is refused
        (iterating it would look up its characters)."""
        if isinstance(keys, str | bytes):
            raise InvalidArgumentError(
                f"give a list of keys, not a single {type(keys).__name__}: {keys!r:.40}")
        try:
            found = list(keys)
        except TypeError:
            raise InvalidArgumentError(
                f"keys must be an iterable of str, got {type(keys).__name__}") from None
        longest = self.config.max_key_length
        for key in found:  # the common case inline; check_key says what is wrong
            if key.__class__ is not str or not 0 < len(key) <= longest or not key.isascii():
                self.check_key(key)
        return found

    def ttl(self, ttl: float | None, strategy: CacheStrategy | None) -> float:
        """The L2 TTL to write for a call: what it asks for (``default_ttl`` if it names
        none), :meth:`jitter`-ed."""
        return self.jitter(self.requested_ttl(ttl, strategy))

    def requested_ttl(self, ttl: float | None, strategy: CacheStrategy | None) -> float:
        """The L2 TTL a call asks for, ``default_ttl`` if it names none."""
        seconds = resolve_ttl(ttl, strategy)
        return self.config.default_ttl if seconds is None else seconds

    def jitter(self, seconds: float) -> float:
        """``seconds`` shortened by a random fraction in ``[0, ttl_jitter]`` (never below
        1 ms, never longer), so keys written together do not all expire together. The
        longest TTL there is (ten years: what the framework backends write for "no
        expiry") is left alone."""
        spread = self.config.ttl_jitter
        if not spread or seconds >= MAX_TTL:
            return seconds
        return max(0.001, seconds * (1.0 - spread * random.random()))
