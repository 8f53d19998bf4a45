"""A Flask-Caching (and cachelib) backend on a :class:`~fleetcache.FleetCache`.

    app.config["CACHE_TYPE"] = "fleetcache.flask_caching.FleetCacheBackend"
    app.config["CACHE_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    app.config["CACHE_KEY_PREFIX"] = "shop"          # the fleetcache namespace
    app.config["CACHE_OPTIONS"] = {"l1_capacity": 5000}
    cache = flask_caching.Cache(app)

Why this module path and base class: Flask-Caching 2.5 (``Cache._set_cache``) picks how to
build a backend from the *text* of ``CACHE_TYPE``. A path that contains ``"cachelib"``
anywhere is called as ``Cls(*CACHE_ARGS, default_timeout=..., ignore_delete_many_errors=...,
**CACHE_OPTIONS)``, so ``CACHE_REDIS_URL`` and ``CACHE_KEY_PREFIX`` would never reach it. Any
other path is called as ``factory(app, config, args, options)``, where ``factory`` is the
class's classmethod only if the class subclasses ``flask_caching.backends.base.BaseCache``
(otherwise the class itself receives those four positional arguments and breaks). Hence a
module name without "cachelib", a subclass of Flask-Caching's ``BaseCache`` (itself a
``cachelib.BaseCache``), and :meth:`FleetCacheBackend.factory` to read the ``CACHE_*`` keys.
The class also works on its own with cachelib's constructor contract.

Semantics differ from cachelib's ``RedisCache`` where fleetcache's guarantees need it:

* Values are MessagePack, never pickle: a value msgspec cannot encode raises
  ``ValueEncodeError`` (a ``TypeError``) and nothing is written. Flask-Caching catches and
  logs that outside debug mode, so such a view or function simply runs uncached.
* Writes (``set``, ``add``, ``set_many``, ``delete``, ``clear``, ``inc``, ``dec``) raise
  ``BackendError`` when Redis cannot be reached, like cachelib's ``RedisCache`` raises
  redis-py's errors, instead of returning False: every worker keeps an L1 copy, so a write or
  delete that silently failed would leave the whole fleet serving the old value. Reads
  degrade to a miss. ``delete_many`` follows cachelib's ``ignore_delete_many_errors``.
* ``inc``/``dec`` are atomic across the fleet (compare-and-set in Redis).
* Values must read back as they were stored (``strict_types``, on by default here):
  a tuple, set, Struct or dataclass raises ``ValueEncodeError`` instead of coming back as
  a list or dict, so a view returning ``(body, 201, headers)`` runs uncached instead of
  being served as a JSON list with status 200.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from cachelib import BaseCache as CachelibBaseCache
from flask_caching.backends.base import BaseCache

from ..core.config import CacheConfig, check_setting_names
from ..core.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    InvalidArgumentError,
)
from ..core.front import FleetCache

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["NO_EXPIRY_SECONDS", "FleetCacheBackend"]

logger = logging.getLogger("fleetcache")

#: What cachelib's ``timeout=0`` ("never expires") becomes: fleetcache requires a positive
#: TTL, and ten years is the longest it accepts.
NO_EXPIRY_SECONDS: Final = 10 * 365 * 24 * 3600

_MISSING: Final[Any] = object()


class FleetCacheBackend(BaseCache):
    """cachelib's cache API over one :class:`~fleetcache.FleetCache` (L1 + Redis L2).

    Args:
        default_timeout: seconds (or a ``timedelta``) when a call gives no timeout; 0 means
            no expiry (stored for :data:`NO_EXPIRY_SECONDS`).
        ignore_delete_many_errors: if False, ``delete_many`` raises ``RuntimeError`` when a
            key could not be deleted (cachelib's contract; Flask-Caching passes
            ``CACHE_IGNORE_ERRORS``).
        url: Redis/Valkey URL; None reads ``FLEETCACHE_REDIS_URL``/``REDIS_URL`` when the
            first connection is made (see :class:`~fleetcache.FleetCache`).
        namespace: the fleetcache namespace: every key lives under it, and :meth:`clear`
            deletes this namespace only. None means fleetcache's default.
        key_prefix: cachelib's name for the same thing (``cachelib.RedisCache(key_prefix=)``);
            trailing ``:`` are dropped (fleetcache adds its own separators), so
            ``"shop:"`` is the namespace ``shop``. Give it or ``namespace``, not both.
        fleetcache_options: any other :class:`~fleetcache.CacheConfig` setting.

    The underlying cache is :attr:`cache` (for ``stats()``, ``health()``, streams).
    """

    def __init__(
        self,
        default_timeout: int | dt.timedelta = 300,
        ignore_delete_many_errors: bool = True,
        *,
        url: str | None = None,
        namespace: str | None = None,
        key_prefix: str | None = None,
        **fleetcache_options: Any,
    ) -> None:
        # Flask-Caching's BaseCache.__init__ types default_timeout as int only; cachelib's
        # accepts a timedelta too, so call cachelib's directly (as Flask-Caching's own
        # RedisCache does).
        CachelibBaseCache.__init__(
            self,
            default_timeout=default_timeout,
            ignore_delete_many_errors=ignore_delete_many_errors,
        )
        if self.default_timeout < 0:
            raise ConfigError(f"default_timeout must be >= 0 seconds, got {default_timeout!r}")
        check_setting_names(fleetcache_options)
        options = dict(fleetcache_options)
        if url is not None:
            options["url"] = url
        if key_prefix:  # cachelib's default is "" (none), and None means the same
            if namespace is not None:
                raise ConfigError("give namespace or key_prefix, not both")
            namespace = _namespace_of(key_prefix)
        if namespace is not None:
            options["namespace"] = namespace
        options.setdefault("strict_types", True)
        self.cache = FleetCache(**options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cache!r})"

    @classmethod
    def factory(
        cls,
        app: Flask,
        config: dict[str, Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> FleetCacheBackend:
        """Build the backend from Flask-Caching's settings (Flask-Caching calls this).

        ``kwargs`` already holds ``default_timeout`` (``CACHE_DEFAULT_TIMEOUT``),
        ``ignore_delete_many_errors`` (``CACHE_IGNORE_ERRORS``) and every ``CACHE_OPTIONS``
        entry; ``args`` is ``CACHE_ARGS``. Added here, unless ``CACHE_OPTIONS`` sets them:

        * ``url``: ``CACHE_REDIS_URL``; else one built from ``CACHE_REDIS_HOST``/``_PORT``/
          ``_DB``/``_PASSWORD`` if any is set (as ``RedisCache`` reads them), so an app moved
          from ``RedisCache`` does not silently talk to another server; else the environment.
        * ``key_prefix``: ``CACHE_KEY_PREFIX`` (Flask-Caching's default is ``flask_cache_``),
          the namespace (see ``key_prefix`` above).
        """
        options = dict(kwargs)
        if "url" not in options:
            url = config.get("CACHE_REDIS_URL") or _url_from_parts(config)
            if url:
                options["url"] = url
        if "namespace" not in options and "key_prefix" not in options:
            options["key_prefix"] = config.get("CACHE_KEY_PREFIX")
        return cls(*args, **options)

    # -- timeouts --------------------------------------------------------------------------

    def _ttl(self, timeout: int | dt.timedelta | None) -> float:
        """cachelib timeout -> fleetcache TTL: None is the default, 0 is "never expires"."""
        seconds = self._normalize_timeout(timeout)
        if seconds == 0:
            return float(NO_EXPIRY_SECONDS)
        if seconds < 0:
            raise InvalidArgumentError(f"timeout must be >= 0 seconds, got {timeout!r}")
        return float(seconds)

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value, or None on a miss (or if Redis is unreachable)."""
        return self.cache.get(key)

    def get_many(self, *keys: str) -> list[Any]:
        """Values in the order of ``keys`` (None for misses); one MGET for the L1 misses."""
        found = self.cache.get_many(keys)
        return [found.get(key) for key in keys]

    def has(self, key: str) -> bool:
        """Whether ``key`` holds a value (a cached None counts). Reads the value: fleetcache
        has no cheaper existence check, and the read may warm L1 for the next ``get``."""
        return self.cache.get(key, _MISSING) is not _MISSING

    # -- writes ----------------------------------------------------------------------------

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store ``value`` and drop ``key`` from every worker's L1; True (raises on errors)."""
        self.cache.set(key, value, ttl=self._ttl(timeout))
        return True

    def set_many(
        self, mapping: Mapping[str, Any], timeout: int | dt.timedelta | None = None
    ) -> list[Any]:
        """Store every pair in one atomic round trip; the keys set. On an error (raised)
        nothing was written."""
        self.cache.set_many(mapping, ttl=self._ttl(timeout))
        return list(mapping)

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` holds none (SET NX, atomic fleet-wide)."""
        return self.cache.add(key, value, ttl=self._ttl(timeout))

    def delete(self, key: str) -> bool:
        """Delete ``key`` everywhere (L2 and every L1); True if it existed."""
        return self.cache.delete(key)

    def delete_many(self, *keys: str) -> list[Any]:
        """Delete each key; the keys now absent (missing ones included).

        A key whose delete failed is left out of the result; with
        ``ignore_delete_many_errors=False`` the call then raises ``RuntimeError`` (chained
        to the ``BackendError``). Once Redis is unreachable the remaining keys are not
        tried, so the call stays within one command's timeout.
        """
        deleted: list[str] = []
        failed: list[str] = []
        error: BackendError | None = None
        for index, key in enumerate(keys):
            try:
                self.cache.delete(key)
            except BackendUnavailableError as exc:
                error = exc
                failed.extend(keys[index:])
                break
            except BackendError as exc:
                error = error or exc
                failed.append(key)
            else:
                deleted.append(key)
        if failed:
            if not self.ignore_delete_many_errors:
                raise RuntimeError(f"Failed to delete keys: {failed}") from error
            logger.warning("fleetcache: delete_many could not delete %d key(s): %s",
                           len(failed), error)
        return deleted

    def clear(self) -> bool:
        """Delete every value of this namespace (other namespaces are untouched); True."""
        self.cache.clear()
        return True

    def inc(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer under ``key`` (absent counts as 0); the new value.

        Atomic across the fleet (:meth:`FleetCache.incr`: compare-and-set in Redis). The
        TTL restarts at ``default_timeout``, as in cachelib's generic ``BaseCache.inc``.
        Raises ``BackendError`` when Redis cannot be read: a counter never restarts from 0
        because a read timed out.
        """
        return self.cache.incr(key, delta, ttl=self._ttl(None))

    def dec(self, key: str, delta: int = 1) -> int:
        """``inc(key, -delta)``, as atomic."""
        return self.inc(key, -delta)

    def close(self) -> None:
        """Stop the cache's listener and close its connections."""
        self.cache.close()


def _namespace_of(key_prefix: str) -> str:
    """cachelib's ``key_prefix`` as a fleetcache namespace, or a ``ConfigError`` naming it."""
    namespace = key_prefix.rstrip(":") if isinstance(key_prefix, str) else key_prefix
    try:
        CacheConfig(namespace=namespace)
    except ConfigError as exc:
        raise ConfigError(
            f"key_prefix (CACHE_KEY_PREFIX) {key_prefix!r} is used as the fleetcache "
            f"namespace: {exc}; change it, or set CACHE_OPTIONS={{'namespace': ...}}"
        ) from exc
    return namespace


def _url_from_parts(config: Mapping[str, Any]) -> str | None:
    """A URL from ``CACHE_REDIS_HOST``/``PORT``/``DB``/``PASSWORD``, if any of them is set."""
    parts = ("CACHE_REDIS_HOST", "CACHE_REDIS_PORT", "CACHE_REDIS_DB", "CACHE_REDIS_PASSWORD")
    if all(config.get(name) is None for name in parts):
        return None
    host = config.get("CACHE_REDIS_HOST") or "localhost"
    port = config.get("CACHE_REDIS_PORT") or 6379
    db = config.get("CACHE_REDIS_DB") or 0
    password = config.get("CACHE_REDIS_PASSWORD")
    auth = f":{quote(str(password), safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"
