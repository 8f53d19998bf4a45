"""A Django cache backend on a :class:`~fleetcache.FleetCache` (per-process L1 + Redis L2).

    CACHES = {
        "default": {
            "BACKEND": "fleetcache.django.FleetCacheBackend",
            "LOCATION": "redis://127.0.0.1:6379/0",
            "OPTIONS": {"namespace": "shop", "l1_capacity": 5000},
        }
    }

``KEY_PREFIX``, ``VERSION``, ``KEY_FUNCTION`` and ``TIMEOUT`` mean what Django says they
mean (keys go through ``make_and_validate_key``, so the memcached-portability warnings are
raised too). ``OPTIONS`` holds :class:`~fleetcache.CacheConfig` settings, validated: an
unknown name raises ``ConfigError`` instead of silently running with a default. See
docs/django.md.

Why the design is what it is:

* **One FleetCache per process, shared.** Django builds a backend object per thread and per
  alias (``caches`` is thread-local), and calls ``close()`` after every request. A
  FleetCache per backend object would give each thread its own L1, listener thread and
  pool, and two aliases on one server (``default`` and a ``VERSION=2`` alias) would serve
  each other's writes stale from their own L1s until the notice arrived. So every backend
  whose server and OPTIONS are the same uses one FleetCache for the whole process (forked
  children reset it themselves), and ``close()`` is a no-op; :func:`close_shared_caches`
  really closes them (process shutdown, tests; the gunicorn ``worker_exit`` hook closes
  every FleetCache already).
* **Values.** Django caches anything picklable (``cache_page`` stores ``HttpResponse``,
  apps store model instances), which MessagePack cannot carry. A value made only of plain
  types that read back as exactly the same thing (``None``, bool, int within 64 bits,
  float, str, bytes, and lists and dicts of them) stays MessagePack. Anything else (a tuple,
  a datetime, a model instance...) is pickled into a MessagePack extension whose payload
  starts with an HMAC-SHA256 of the namespace, the key and the pickle, and ``pickle.loads``
  runs only after that HMAC verified. The key is derived from ``SECRET_KEY`` (or the
  ``signing_key`` OPTION) with a salt, as ``django.core.signing`` derives its keys, so a
  client that can write to Redis still cannot make a worker unpickle its bytes. On top of
  that every value is stored with fleetcache's own envelope signing (``signing_key``), so
  such a client cannot plant plain values either. A value that fails either check, or does
  not unpickle (its class was renamed since), reads as a miss, is counted and logged once:
  ``get`` never raises for it.
* **Every read returns a new object**, as with every Django backend (and unlike
  :class:`~fleetcache.FleetCache` itself, whose L1 hands out one shared object): pickled
  values are unpickled per read, lists and dicts are copied (a MessagePack round trip), so
  code that mutates what it read cannot change what the next request reads.
* **Writes raise** ``BackendError`` when Redis cannot be reached, as Django's own
  ``RedisCache`` raises redis-py's errors: every worker keeps an L1 copy, so a write or a
  delete that failed silently would leave the fleet serving the old value. Reads degrade
  to a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import pickle
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast

import msgspec
from django.conf import settings  # type: ignore[import-untyped]
from django.core.cache.backends.base import (  # type: ignore[import-untyped]
    DEFAULT_TIMEOUT,
    BaseCache,
)
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.utils.crypto import salted_hmac  # type: ignore[import-untyped]

from ..core.config import MAX_TTL, CacheConfig, check_setting_names
from ..core.errors import (
    BackendUnavailableError,
    ConfigError,
    InvalidArgumentError,
    ValueTypeError,
)
from ..core.front import FleetCache

__all__ = ["DEFAULT_NAMESPACE", "NO_EXPIRY_SECONDS", "FleetCacheBackend",
           "close_shared_caches"]

logger = logging.getLogger("fleetcache")

#: What Django's ``timeout=None`` ("forever") becomes: fleetcache needs a positive TTL,
#: and ten years is the longest it accepts (and it never jitters that one).
NO_EXPIRY_SECONDS: Final = int(MAX_TTL)

#: The fleetcache namespace when OPTIONS names none. Aliases on one server share it (as
#: they share a database with Django's RedisCache), so ``clear()`` on one clears them all.
DEFAULT_NAMESPACE: Final = "django"

_SALT: Final = "fleetcache.integrations.django.FleetCacheBackend"
_PICKLE_EXT: Final = 80  # MessagePack extension code of a signed pickle ("P")
_MAC_SIZE: Final = 32  # HMAC-SHA256
_MIN_TTL: Final = 0.001  # fleetcache's shortest TTL
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1  # MessagePack ints: int64 and uint64
_MAX_DEPTH: Final = 32  # deeper values are pickled (MessagePack refuses deep nesting)
_PLAIN_SCALARS: Final = frozenset({bool, float, bytes, type(None)})

_MISSING: Final[Any] = object()

# One reused encoder/decoder: a fresh copy of a list or dict served from L1.
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class _Shared:
    """What every backend of one server and OPTIONS shares in a process: the FleetCache,
    the pickle key, and the count of values read as misses because they failed it."""

    __slots__ = ("_mac_base", "cache", "lock", "rejected")

    def __init__(self, cache: FleetCache, pickle_key: bytes) -> None:
        self.cache = cache
        # The namespace is part of what is signed: a pickle copied from another namespace
        # on the same server (same SECRET_KEY) does not verify either.
        self._mac_base = hmac.new(pickle_key, _framed(cache.config.namespace.encode()),
                                  hashlib.sha256)
        self.lock = threading.Lock()
        self.rejected = 0

    def mac(self, key: str, data: bytes) -> bytes:
        """HMAC-SHA256 of (namespace, ``key``, ``data``), each length-framed."""
        mac = self._mac_base.copy()
        mac.update(_framed(key.encode()))
        mac.update(data)
        return mac.digest()

    def reject(self, key: str, why: str) -> Any:
        """Count (and log, first time and then at powers of two) a value read as a miss."""
        with self.lock:
            self.rejected += 1
            count = self.rejected
        if count & (count - 1) == 0:
            logger.warning("fleetcache: value under Django key %r read as a miss: %s "
                           "(%d so far)", key, why, count)
        return _MISSING


_registry: dict[tuple[object, ...], _Shared] = {}
_registry_lock = threading.Lock()


def close_shared_caches() -> None:
    """Close every FleetCache the Django backends of this process share, and forget them
    (backends built afterwards make new ones; those built before must not be used again).

    For process shutdown and tests: Django's own ``close()`` after each request is a no-op
    on purpose (see the module docstring).
    """
    with _registry_lock:
        shared = list(_registry.values())
        _registry.clear()
    for entry in shared:
        entry.cache.close()


class FleetCacheBackend(BaseCache):  # type: ignore[misc]
    """Django's cache API over one process-wide :class:`~fleetcache.FleetCache`.

    Args:
        location: ``LOCATION``, one URL as ``url`` takes (``redis://``, ``rediss://``,
            ``unix://``, ``redis+sentinel://``, ``redis+cluster://``; a list of exactly one
            is accepted too). Empty: ``FLEETCACHE_REDIS_URL``/``REDIS_URL``,
            read when the first connection is made (see :class:`~fleetcache.FleetCache`).
        params: the rest of the ``CACHES`` entry. ``OPTIONS`` holds
            :class:`~fleetcache.CacheConfig` settings (not ``url``: that is ``LOCATION``);
            ``namespace`` defaults to :data:`DEFAULT_NAMESPACE`; ``signing_key`` defaults to
            a key derived from ``SECRET_KEY`` and cannot be turned off.

    The underlying cache is :attr:`cache` (for ``stats()``, ``health()``, streams).
    """

    def __init__(self, location: str | list[str] | tuple[str, ...],
                 params: dict[str, Any]) -> None:
        options = params.get("OPTIONS") or {}
        if not isinstance(options, Mapping):  # before Django's own __init__ trips on it
            raise ConfigError(f"OPTIONS must be a dict of fleetcache settings, got "
                              f"{type(options).__name__}")
        super().__init__(params)
        self._shared = _shared_for(_url_of(location), options)
        self.cache: FleetCache = self._shared.cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cache!r})"

    @property
    def rejected_values(self) -> int:
        """Pickled values of this process read as misses because their HMAC did not verify
        or they did not unpickle (shared by the backends of one FleetCache). Envelopes that
        fail fleetcache's own signature are ``cache.stats().corrupt_values``."""
        return self._shared.rejected

    # -- timeouts --------------------------------------------------------------------------

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """Seconds the entry will live: None for forever, 0 for "do not store" (what
        Django's ``RedisCache`` returns, not an absolute time)."""
        ttl = self._ttl(timeout)
        if ttl is None:
            return 0
        return None if ttl >= NO_EXPIRY_SECONDS else ttl

    def _ttl(self, timeout: Any) -> float | None:
        """Django timeout -> fleetcache TTL; None means "do not store" (0 or negative).

        ``DEFAULT_TIMEOUT`` is the alias's ``TIMEOUT``; None is forever
        (:data:`NO_EXPIRY_SECONDS`, as are timeouts past it); fractions of a second are kept
        (down to fleetcache's 1 ms), not truncated to whole seconds.
        """
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return float(NO_EXPIRY_SECONDS)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or (
                math.isnan(timeout)):
            raise InvalidArgumentError(f"timeout must be a number of seconds or None, got "
                                       f"{timeout!r}")
        if timeout <= 0:
            return None
        return min(max(float(timeout), _MIN_TTL), float(NO_EXPIRY_SECONDS))

    # -- values ----------------------------------------------------------------------------

    def _dump(self, key: str, value: Any) -> Any:
        """What to store for ``value`` under ``key``: the value itself if it is plain (see
        :func:`_is_plain`), else its pickle, signed. Pickling errors (``PickleError``,
        ``TypeError``...) reach the caller, as with Django's own backends."""
        if _is_plain(value):
            return value
        data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        return msgspec.msgpack.Ext(_PICKLE_EXT, self._shared.mac(key, data) + data)

    def _pickle_of(self, key: str, stored: msgspec.msgpack.Ext) -> bytes | None:
        """The pickle inside a stored extension if its HMAC verifies for ``key``; None (and
        counted) if not. Nothing reaches ``pickle.loads`` without passing here."""
        data = cast(bytes, stored.data)  # bytes as decoded, and as _dump makes it
        if stored.code != _PICKLE_EXT or len(data) <= _MAC_SIZE:
            self._shared.reject(key, f"not a signed pickle (extension {stored.code})")
            return None
        body = data[_MAC_SIZE:]
        if not hmac.compare_digest(self._shared.mac(key, body), data[:_MAC_SIZE]):
            self._shared.reject(key, "its signature does not verify (forged, or written "
                                     "with another SECRET_KEY / signing_key)")
            return None
        return body

    def _load(self, key: str, stored: Any) -> Any:
        """The value a read returns for what the cache holds: a new object each time;
        :data:`_MISSING` for a value that fails verification or does not unpickle."""
        kind = type(stored)
        if kind is msgspec.msgpack.Ext:
            body = self._pickle_of(key, stored)
            if body is None:
                return _MISSING
            try:
                return pickle.loads(body)  # the HMAC verified just above
            except Exception as exc:  # its class moved or changed since it was stored
                return self._shared.reject(key, f"it does not unpickle: {exc!r}")
        if kind is list or kind is dict:
            return _decode(_encode(stored))  # a copy: L1's object is shared by the process
        return stored

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        """The value, or ``default`` on a miss (also when Redis is unreachable, or the
        stored value fails verification)."""
        made = self.make_and_validate_key(key, version=version)
        stored = self.cache.get(made, _MISSING)
        if stored is _MISSING:
            return default
        value = self._load(made, stored)
        return default if value is _MISSING else value

    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        """``{key: value}`` of the keys found, with one MGET for those not in L1."""
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = self.cache.get_many(list(made))
        result: dict[str, Any] = {}
        for made_key, stored in found.items():
            value = self._load(made_key, stored)
            if value is not _MISSING:
                result[made[made_key]] = value
        return result

    def has_key(self, key: str, version: int | None = None) -> bool:
        """Whether ``key`` holds a value (a cached None counts; a pickle that fails
        verification does not). Reads the value: fleetcache has no cheaper check."""
        made = self.make_and_validate_key(key, version=version)
        stored = self.cache.get(made, _MISSING)
        if type(stored) is msgspec.msgpack.Ext:
            return self._pickle_of(made, stored) is not None
        return stored is not _MISSING

    # -- writes ----------------------------------------------------------------------------

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> None:
        """Store ``value`` and drop ``key`` from every worker's L1. A timeout of 0 or less
        deletes the key instead (Django's "do not cache")."""
        made = self.make_and_validate_key(key, version=version)
        stored = self._dump(made, value)
        ttl = self._ttl(timeout)
        if ttl is None:
            self.cache.delete(made)
        else:
            self.cache.set(made, stored, ttl=ttl)

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> bool:
        """Store ``value`` only if ``key`` holds none (SET NX: of concurrent adds across the
        fleet exactly one wins); True if stored.

        With a timeout of 0 or less nothing stays stored, and the answer is whether the key
        was free, as with Django's ``RedisCache`` (which stores, then deletes).
        """
        made = self.make_and_validate_key(key, version=version)
        stored = self._dump(made, value)
        ttl = self._ttl(timeout)
        if ttl is not None:
            return self.cache.add(made, stored, ttl=ttl)
        if self.cache.add(made, stored, ttl=_MIN_TTL):
            self.cache.delete(made)
            return True
        return False

    def set_many(self, data: Mapping[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[str]:
        """Store every pair in one atomic round trip; ``[]`` (an error raises, and then
        nothing was written). A timeout of 0 or less deletes the keys instead."""
        if not data:
            return []
        stored = {}
        for key, value in data.items():
            made = self.make_and_validate_key(key, version=version)
            stored[made] = self._dump(made, value)
        ttl = self._ttl(timeout)
        if ttl is None:
            self.cache.delete_many(list(stored))
        else:
            self.cache.set_many(stored, ttl=ttl)
        return []

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT,
              version: int | None = None) -> bool:
        """Give ``key`` a new timeout (0 or less deletes it); True if it existed.

        The expiry lives inside the stored envelope too (so that a worker's L1 copy never
        outlives the Redis entry), hence no bare EXPIRE: the stored form is read and written
        back with the new TTL (no unpickling), which also tells every worker. Not atomic: a
        write of the key between the two steps is overwritten by the value read, and a
        delete between them is undone. (A compare-and-set touch in fleetcache's core, like
        its ``incr``, would close that window.)
        """
        made = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is None:
            return self.cache.delete(made)
        stored = self.cache.get(made, _MISSING)
        if stored is _MISSING:
            return False
        self.cache.set(made, stored, ttl=ttl)
        return True

    def delete(self, key: str, version: int | None = None) -> bool:
        """Delete ``key`` from Redis and every worker's L1; True if it existed."""
        return self.cache.delete(self.make_and_validate_key(key, version=version))

    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        """Delete the keys in one round trip, with one notice to every worker."""
        made = [self.make_and_validate_key(key, version=version) for key in keys]
        if made:
            self.cache.delete_many(made)

    def clear(self) -> None:
        """Delete every value of this namespace (every alias sharing it) and flush every
        worker's L1. Other namespaces, and anything else in the Redis database, stay."""
        self.cache.clear()

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        """Add ``delta`` to the int under ``key``; the new value. ``decr`` calls this.

        The addition is atomic across the fleet (compare-and-set in Redis, see
        :meth:`FleetCache.incr`) and keeps the entry's expiry. Raises ``ValueError`` if the
        key holds nothing, as Django requires, and ``TypeError`` (``ValueTypeError``) if it
        holds something other than an int. If the key seemed absent because Redis could not
        be read, ``BackendUnavailableError`` is raised instead of ``ValueError``: the usual
        ``except ValueError: cache.set(key, 1)`` must not restart a live counter.

        The existence check is a read before the atomic addition: a delete landing between
        the two makes the addition start again from 0 (with fleetcache's ``default_ttl``).
        """
        made = self.make_and_validate_key(key, version=version)
        current = self.cache.get(made, _MISSING)
        if current is _MISSING:
            health = self.cache.health()
            if not health.redis_ok:
                raise BackendUnavailableError(
                    f"cannot increment {made!r}: Redis could not be read ({health.error})")
            raise ValueError(f"Key '{key}' not found")
        if type(current) is not int:
            held = "a pickled value" if type(current) is msgspec.msgpack.Ext else (
                f"a {type(current).__name__}")
            raise ValueTypeError(made, int, f"it holds {held}, which cannot be incremented")
        return self.cache.incr(made, delta)

    def get_or_set(self, key: str, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> Any:
        """The cached value, or ``default`` (called if callable) stored and returned.

        With a callable ``default`` and a positive timeout, the call is single-flight across
        the fleet (:meth:`FleetCache.get_or_compute`): of many workers missing the key at
        once, one calls ``default`` and the others wait for its value. A value given as is
        (nothing to compute) keeps Django's own get-add-get.
        """
        ttl = self._ttl(timeout)
        if not callable(default) or ttl is None:
            return super().get_or_set(key, default, timeout=timeout, version=version)
        made = self.make_and_validate_key(key, version=version)
        compute: Callable[[], Any] = default

        def fill() -> Any:
            return self._dump(made, compute())

        value = self._load(made, self.cache.get_or_compute(made, fill, ttl=ttl))
        if value is _MISSING:  # what the fleet stored failed verification: replace it
            value = compute()
            self.set(key, value, timeout=timeout, version=version)
        return value

    def close(self, **kwargs: Any) -> None:
        """Nothing: Django calls this after every request, and the connections are the
        process's pool, shared by every thread (see :func:`close_shared_caches`)."""


def _framed(data: bytes) -> bytes:
    """``data`` preceded by its length, so that concatenated fields cannot be re-split."""
    return struct.pack(">I", len(data)) + data


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made only of types that read back from MessagePack as exactly
    themselves: ``None``, bool, int (64 bits), float, str (valid UTF-8), bytes, and lists
    and dicts of them (dict keys alike), by exact type. Tuples, sets, datetimes, subclasses
    and everything else would read back as something else (or not at all): pickled.

    Plain loops, not ``all()`` over generators: this runs on every write.
    """
    kind = type(value)
    if kind is str:
        text: str = value
        return text.isascii() or _is_utf8(text)
    if kind is int:
        number: int = value
        return _INT_MIN <= number <= _INT_MAX
    if kind in _PLAIN_SCALARS:
        return True
    if depth >= _MAX_DEPTH:
        return False
    depth += 1
    if kind is list:
        for item in value:
            if type(item) not in _PLAIN_SCALARS and not _is_plain(item, depth):
                return False
        return True
    if kind is dict:
        for k, v in value.items():
            if type(k) not in _PLAIN_SCALARS and not _is_plain(k, depth):
                return False
            if type(v) not in _PLAIN_SCALARS and not _is_plain(v, depth):
                return False
        return True
    return False


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: MessagePack cannot carry it, pickle can
        return False
    return True


def _url_of(location: object) -> str | None:
    """``LOCATION`` as one URL; None (the environment's URL) when empty."""
    if isinstance(location, list | tuple):
        if len(location) > 1:
            raise ConfigError("LOCATION names several servers: fleetcache uses one (its "
                              "invalidations travel through that server's pub/sub)")
        location = location[0] if location else ""
    if not isinstance(location, str):
        raise ConfigError(f"LOCATION must be a redis:// URL, got {type(location).__name__}")
    if location.count("://") > 1:
        raise ConfigError("LOCATION names several servers: fleetcache uses one (its "
                          "invalidations travel through that server's pub/sub)")
    return location or None


def _shared_for(url: str | None, given: Mapping[str, Any]) -> _Shared:
    """The process's shared FleetCache for ``url`` and these OPTIONS (made on first use)."""
    options = dict(given)
    check_setting_names(options)
    if "url" in options:
        raise ConfigError("give the server as LOCATION, not OPTIONS['url']")
    if "signing_key" in options and options["signing_key"] is None:
        raise ConfigError("the Django backend always signs (it pickles): leave signing_key "
                          "out to derive it from SECRET_KEY, or give a secret")
    options.setdefault("namespace", DEFAULT_NAMESPACE)
    # Only plain values and signed pickles are handed to the core: anything else is a bug
    # here, and should fail loudly rather than read back as a list.
    options.setdefault("strict_types", True)
    options["signing_key"] = _signing_key(options.get("signing_key"))
    if url is not None:
        options["url"] = url
    config = CacheConfig(**options)  # validated now, at the first caches[alias]
    registry_key = (url is None, config)
    with _registry_lock:
        shared = _registry.get(registry_key)
        if shared is None:
            pickle_key = salted_hmac(_SALT + ".pickle", b"", secret=config.signing_key_bytes,
                                     algorithm="sha256").digest()
            # Without a URL, FleetCache reads the environment when it first connects.
            shared = _registry[registry_key] = _Shared(FleetCache(**options), pickle_key)
    return shared


def _signing_key(given: str | bytes | None) -> str | bytes:
    """The OPTION as given (so other fleetcache clients with the same secret can read the
    plain values), else a key derived from ``SECRET_KEY`` with a salt of its own, the way
    ``django.core.signing`` derives its keys: never ``SECRET_KEY`` itself."""
    if given is not None:
        return given
    try:
        secret = settings.SECRET_KEY
    except ImproperlyConfigured as exc:
        raise ConfigError(f"the Django backend signs what it stores with a key derived from "
                          f"SECRET_KEY ({exc}); set SECRET_KEY or OPTIONS['signing_key']"
                          ) from exc
    if not secret:
        raise ConfigError("the Django backend signs what it stores with a key derived from "
                          "SECRET_KEY, which is empty; set it or OPTIONS['signing_key']")
    derived: bytes = salted_hmac(_SALT + ".signing_key", b"", secret=secret,
                                 algorithm="sha256").digest()
    return derived
