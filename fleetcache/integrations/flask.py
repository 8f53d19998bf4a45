"""Flask integration: one :class:`~fleetcache.FleetCache` per app, set up from ``app.config``.

    from fleetcache.flask import FleetCacheExtension, current_cache

    fleet = FleetCacheExtension()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["FLEETCACHE_NAMESPACE"] = "shop"
        fleet.init_app(app)
        return app

    @bp.get("/products")
    @fleet.cached_view(ttl=30)
    def products() -> Response: ...

    def handler() -> ...:
        current_cache().get_or_compute("k", compute)

Settings: ``FLEETCACHE_<SETTING>`` for every :class:`~fleetcache.CacheConfig` field
(``FLEETCACHE_NAMESPACE``, ``FLEETCACHE_L1_CAPACITY``, ``FLEETCACHE_DEFAULT_TTL``, ...), and
``FLEETCACHE_REDIS_URL`` for the URL. Without a URL in ``app.config`` the cache reads
``FLEETCACHE_REDIS_URL``/``REDIS_URL`` from the environment when it first connects.

The cache lives as long as the process: it is built in ``init_app`` (no socket, no thread
yet), connects on first use, resets itself in forked workers, and is never closed per
request or per app context; nothing is registered per request. Connections and the
invalidation listener are per process, so opening them per request would only add latency
and miss invalidations.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, ParamSpec
from urllib.parse import quote, urlencode

import redis
from flask import Flask, Response, current_app, has_app_context, make_response, request
from flask.typing import ResponseReturnValue

from ..core.config import SETTINGS, check_setting_names
from ..core.errors import ConfigError
from ..core.front import FleetCache
from ..core.strategy import CacheStrategy, resolve_ttl
from ..observe.fleet import read_cache_fleet
from ..observe.prometheus import CONTENT_TYPE, render

__all__ = [
    "EXTENSION_KEY", "FleetCacheExtension", "cache_for", "cache_options", "current_cache",
    "metrics_view", "register_metrics",
]

logger = logging.getLogger("fleetcache")

P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]

#: Where ``init_app`` stores the app's cache: ``app.extensions[EXTENSION_KEY]``.
EXTENSION_KEY: Final = "fleetcache"

_PREFIX: Final = "FLEETCACHE_"
_ALIASES: Final = {"redis_url": "url"}  # FLEETCACHE_REDIS_URL, the name the env var uses
_CACHEABLE_METHODS: Final = frozenset({"GET", "HEAD"})


def cache_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~fleetcache.CacheConfig` keywords found in a Flask config.

    ``FLEETCACHE_<SETTING>`` maps to ``<setting>`` when that is a ``CacheConfig`` field;
    ``FLEETCACHE_REDIS_URL`` (or ``FLEETCACHE_URL``) to ``url``. A value of None counts as
    unset, so ``app.config["FLEETCACHE_REDIS_URL"] = os.environ.get(...)`` falls back to the
    environment. Any other ``FLEETCACHE_*`` key raises ``ConfigError``: a misspelt setting
    would otherwise silently run with the default (a misspelt namespace shares, and
    ``clear()``s, another app's keys).
    """
    options: dict[str, Any] = {}
    source: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in config.items():
        if not name.startswith(_PREFIX) or value is None:
            continue
        setting = name[len(_PREFIX):].lower()
        setting = _ALIASES.get(setting, setting)
        if setting not in SETTINGS:
            unknown.append(setting)
            continue
        if setting in options and options[setting] != value:
            raise ConfigError(f"{source[setting]} and {name} disagree; set one of them")
        options[setting] = value
        source[setting] = name
    check_setting_names(unknown, shown=lambda setting: _PREFIX + setting.upper())
    return options


def cache_for(app: Flask) -> FleetCache:
    """The cache ``init_app`` made for ``app``; ``RuntimeError`` if it was not called."""
    cache = app.extensions.get(EXTENSION_KEY)
    if not isinstance(cache, FleetCache):
        raise RuntimeError(
            f"FleetCacheExtension.init_app() was not called for the app {app.name!r}"
        )
    return cache


def current_cache() -> FleetCache:
    """The current app's cache, for request handlers, CLI commands and app-context code."""
    return cache_for(current_app)


class _NotCacheableError(Exception):
    """Carries an uncacheable response out of ``get_or_compute`` (a raising compute stores
    nothing, so the response reaches its client and the fleet's waiters compute their own)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class FleetCacheExtension:
    """Flask extension: ``FleetCacheExtension(app)`` or ``ext.init_app(app)`` per app."""

    def __init__(self, app: Flask | None = None) -> None:
        # Kept only to serve ``.cache`` outside an app context when constructed with an app,
        # as Flask-Caching does; with init_app (app factories) the current app decides.
        self._app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build the app's cache from ``app.config`` (no connection yet).

        Raises ``ConfigError`` for a bad or unknown ``FLEETCACHE_*`` setting, and
        ``RuntimeError`` if the app already has one: a second cache would open a second
        pool and listener per worker for the same keys.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"fleetcache is already set up for the app {app.name!r}")
        app.extensions[EXTENSION_KEY] = FleetCache(**cache_options(app.config))

    @property
    def cache(self) -> FleetCache:
        """The current app's cache (or the constructor's app's, outside an app context)."""
        if has_app_context() or self._app is None:
            return current_cache()
        return cache_for(self._app)

    def metrics_view(self) -> Callable[[], Response]:
        """:func:`metrics_view` of the current app's cache (``app.add_url_rule("/metrics",
        view_func=ext.metrics_view())``)."""
        return metrics_view()

    def register_metrics(self, app: Flask, path: str = "/metrics") -> None:
        """Serve the fleet's Prometheus metrics at ``path`` on ``app``."""
        register_metrics(app, path)

    def cached_view(
        self,
        ttl: float | None = None,
        strategy: CacheStrategy | None = None,
        key_prefix: str = "view:",
    ) -> Callable[[View[P]], View[P]]:
        """Cache a view's 200 responses (body, status, Content-Type) for GET and HEAD.

        The key is ``key_prefix + path + "?" + query`` with the query parameters sorted by
        name (the order of one parameter's repeated values is kept: it can matter to the
        view); a key over ``max_key_length`` is hashed. A cold key runs the view once for the
        whole fleet (``get_or_compute``); concurrent requests wait for its response.

        Never cached: other methods (the view just runs), non-200 responses, streamed or
        file responses, and responses with ``Set-Cookie`` (one client's cookie must not be
        served to everyone) or ``Vary`` (they depend on request headers the key ignores).
        Other headers of a cached response are not replayed. The key ignores the user:
        decorate only views whose response depends on path and query alone.
        """
        resolve_ttl(ttl, strategy)  # fail at decoration time, not on the first request

        def decorate(view: View[P]) -> View[P]:
            @functools.wraps(view)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
                if request.method not in _CACHEABLE_METHODS:
                    return current_app.ensure_sync(view)(*args, **kwargs)  # type: ignore[no-any-return]
                cache = self.cache
                fresh: list[Response] = []

                def render() -> dict[str, Any]:
                    response = make_response(current_app.ensure_sync(view)(*args, **kwargs))
                    if not _cacheable(response):
                        raise _NotCacheableError(response)
                    fresh.append(response)
                    return {
                        "body": response.get_data(),
                        "status": response.status_code,
                        "content_type": response.headers.get("Content-Type"),
                    }

                try:
                    entry = cache.get_or_compute(
                        _view_key(key_prefix, cache.config.max_key_length), render,
                        ttl=ttl, strategy=strategy,
                    )
                except _NotCacheableError as skip:
                    return skip.response
                if fresh:  # this request rendered it: keep every header the view set
                    return fresh[0]
                cached = _response_from(entry)
                if cached is None:
                    logger.warning("fleetcache: the entry of %s is not a cached response; "
                                   "serving it uncached", request.path)
                    return current_app.ensure_sync(view)(*args, **kwargs)  # type: ignore[no-any-return]
                return cached

            return wrapper

        return decorate


def metrics_view(cache: FleetCache | None = None) -> Callable[[], Response]:
    """A view answering with the whole fleet's Prometheus metrics (every worker on every
    host, from the fleet view in Redis: see :mod:`fleetcache.observe.prometheus`), for
    ``cache``, or the current app's cache if None. 503 when Redis cannot be read. Wrap it
    in the app's own auth decorator if the metrics are not public."""

    def fleetcache_metrics() -> Response:
        target = current_cache() if cache is None else cache
        try:
            body = render(read_cache_fleet(target))
        except (redis.RedisError, OSError) as exc:
            return Response(f"fleetcache: fleet view unreadable: {exc}\n", status=503,
                            mimetype="text/plain")
        return Response(body, content_type=CONTENT_TYPE)

    return fleetcache_metrics


def register_metrics(app: Flask, path: str = "/metrics", cache: FleetCache | None = None,
                     endpoint: str = "fleetcache_metrics") -> None:
    """Serve :func:`metrics_view` at ``path`` (GET) on ``app``."""
    app.add_url_rule(path, endpoint=endpoint, view_func=metrics_view(cache), methods=["GET"])


def _view_key(prefix: str, max_length: int) -> str:
    """``prefix + path [+ "?" + query sorted by name]``, hashed if longer than allowed.

    The path is percent-encoded again: ``request.path`` is decoded, so ``/a%3Fx=1`` would
    otherwise share the key of ``/a?x=1`` and one URL could fill another's entry.
    """
    pairs = sorted(request.args.items(multi=True), key=lambda pair: pair[0])
    path = quote(request.path)
    target = f"{path}?{urlencode(pairs)}" if pairs else path
    key = prefix + target
    if len(key) <= max_length:
        return key
    return prefix + "blake2b:" + hashlib.blake2b(target.encode(), digest_size=16).hexdigest()


def _cacheable(response: Response) -> bool:
    return (
        response.status_code == 200
        and not response.is_streamed
        and not response.direct_passthrough
        and "Set-Cookie" not in response.headers
        and "Vary" not in response.headers
    )


def _response_from(entry: Any) -> Response | None:
    """Rebuild a response from a cached entry; None if the entry is not one of ours."""
    if not isinstance(entry, dict):
        return None
    body = entry.get("body")
    status = entry.get("status")
    content_type = entry.get("content_type")
    if (not isinstance(body, bytes) or type(status) is not int
            or not isinstance(content_type, str | None)):
        return None
    response: Response = current_app.response_class(body, status=status)
    if content_type is None:
        del response.headers["Content-Type"]
    else:
        response.headers["Content-Type"] = content_type
    return response
