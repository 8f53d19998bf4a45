"""fleetcache.flask: config mapping, app wiring, and the view cache, against a real server.

The end-to-end tests use the shared ``server`` fixture (Redis and Valkey on free loopback
ports) and a fresh namespace per test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import flask
import pytest
import redis
from flask import Flask, abort, jsonify, request

from fleetcache import CacheStrategy, ConfigError, FleetCache, InvalidArgumentError
from fleetcache.flask import (
    EXTENSION_KEY,
    FleetCacheExtension,
    cache_for,
    cache_options,
    current_cache,
)

from ..helpers import run_threads
from ..servers import DEAD_URL, Server

pytestmark = pytest.mark.usefixtures("no_url_env")


@pytest.fixture
def make_app(server: Server, namespace: str) -> Iterator[Callable[..., Flask]]:
    """Apps with their own FleetCache on the shared server, in this test's namespace."""
    made: list[Flask] = []

    def factory(**config: Any) -> Flask:
        app = Flask(f"app{len(made)}")
        app.config.update(FLEETCACHE_REDIS_URL=server.url, FLEETCACHE_NAMESPACE=namespace)
        app.config.update(config)
        FleetCacheExtension(app)
        made.append(app)
        return app

    yield factory
    for app in made:
        cache_for(app).close()


@pytest.fixture
def raw(server: Server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


class Counter:
    """Counts the calls of a view (thread-safe)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def hit(self) -> int:
        with self._lock:
            self.calls += 1
            return self.calls


# -- configuration --------------------------------------------------------------------------


def test_cache_options_map_every_config_field_and_the_redis_url_alias() -> None:
    options = cache_options({
        "FLEETCACHE_REDIS_URL": "redis://127.0.0.1:7/2",
        "FLEETCACHE_NAMESPACE": "shop",
        "FLEETCACHE_L1_CAPACITY": 5,
        "FLEETCACHE_L1_TTL": 7.5,
        "FLEETCACHE_DEFAULT_TTL": 60,
        "FLEETCACHE_LOCK_TIMEOUT": 3,
        "SECRET_KEY": "not ours",
        "CACHE_TYPE": "not ours either",
    })
    assert options == {"url": "redis://127.0.0.1:7/2", "namespace": "shop", "l1_capacity": 5,
                       "l1_ttl": 7.5, "default_ttl": 60, "lock_timeout": 3}


def test_init_app_builds_the_cache_from_app_config() -> None:
    app = Flask(__name__)
    app.config.update(FLEETCACHE_REDIS_URL=DEAD_URL, FLEETCACHE_NAMESPACE="shop",
                      FLEETCACHE_L1_CAPACITY=5, FLEETCACHE_L1_TTL=7.5,
                      FLEETCACHE_DEFAULT_TTL=60, FLEETCACHE_MAX_KEY_LENGTH=100)
    ext = FleetCacheExtension()
    ext.init_app(app)
    cache = app.extensions[EXTENSION_KEY]
    try:
        assert isinstance(cache, FleetCache)
        config = cache.config
        assert (config.url, config.namespace, config.l1_capacity, config.l1_ttl,
                config.default_ttl, config.max_key_length) == (DEAD_URL, "shop", 5, 7.5, 60.0, 100)
        assert cache_for(app) is cache
        with app.app_context():
            assert ext.cache is cache
            assert current_cache() is cache
    finally:
        cache.close()


def test_fleetcache_url_is_an_alias_and_a_conflict_is_refused() -> None:
    assert cache_options({"FLEETCACHE_URL": DEAD_URL}) == {"url": DEAD_URL}
    assert cache_options({"FLEETCACHE_URL": DEAD_URL, "FLEETCACHE_REDIS_URL": DEAD_URL}) == {
        "url": DEAD_URL}
    with pytest.raises(ConfigError, match="disagree"):
        cache_options({"FLEETCACHE_URL": DEAD_URL, "FLEETCACHE_REDIS_URL": "redis://x:2/0"})


def test_unknown_fleetcache_setting_is_refused_with_the_known_names() -> None:
    app = Flask(__name__)
    app.config["FLEETCACHE_NAMESPCE"] = "typo"
    with pytest.raises(ConfigError, match="FLEETCACHE_NAMESPCE") as info:
        FleetCacheExtension(app)
    assert "FLEETCACHE_NAMESPACE" in str(info.value)
    assert EXTENSION_KEY not in app.extensions


def test_invalid_setting_value_is_refused_at_init_app() -> None:
    app = Flask(__name__)
    app.config.update(FLEETCACHE_REDIS_URL=DEAD_URL, FLEETCACHE_L1_CAPACITY=0)
    with pytest.raises(ConfigError, match="l1_capacity"):
        FleetCacheExtension(app)


def test_init_app_twice_for_one_app_is_refused() -> None:
    app = Flask(__name__)
    app.config["FLEETCACHE_REDIS_URL"] = DEAD_URL
    ext = FleetCacheExtension(app)
    try:
        with pytest.raises(RuntimeError, match="already"):
            ext.init_app(app)
        with pytest.raises(RuntimeError, match="already"):
            FleetCacheExtension(app)
    finally:
        cache_for(app).close()


def test_app_without_init_app_reports_it() -> None:
    app = Flask("bare")
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        current_cache()
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        _ = FleetCacheExtension().cache


def test_one_extension_serves_each_app_its_own_cache() -> None:
    ext = FleetCacheExtension()
    apps = []
    for name in ("a", "b"):
        app = Flask(name)
        app.config.update(FLEETCACHE_REDIS_URL=DEAD_URL, FLEETCACHE_NAMESPACE=name)
        ext.init_app(app)
        apps.append(app)
    try:
        for app in apps:
            with app.app_context():
                assert ext.cache.config.namespace == app.name
        with pytest.raises(RuntimeError):  # no app context, no constructor app
            _ = ext.cache
    finally:
        for app in apps:
            cache_for(app).close()


def test_extension_made_with_an_app_serves_its_cache_outside_a_context() -> None:
    app = Flask(__name__)
    app.config["FLEETCACHE_REDIS_URL"] = DEAD_URL
    ext = FleetCacheExtension(app)
    try:
        assert not flask.has_app_context()
        assert ext.cache is app.extensions[EXTENSION_KEY]
    finally:
        ext.cache.close()


@pytest.mark.parametrize("variable", ["FLEETCACHE_REDIS_URL", "REDIS_URL"])
def test_without_a_configured_url_the_environment_is_used(
    server: Server, namespace: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, server.url)
    app = Flask(__name__)
    # None counts as unset: the usual `app.config[...] = os.environ.get(...)` pattern.
    app.config.update(FLEETCACHE_REDIS_URL=None, FLEETCACHE_NAMESPACE=namespace)
    FleetCacheExtension(app)
    try:
        with app.app_context():
            current_cache().set("k", "from env")
        assert raw.exists(f"{namespace}:v:k")
        assert cache_for(app).config.url == server.url
    finally:
        cache_for(app).close()


# -- handlers -------------------------------------------------------------------------------


def test_current_cache_in_a_handler_reads_and_writes_the_server(
    make_app: Callable[..., Flask], raw: redis.Redis, namespace: str,
) -> None:
    app = make_app()

    @app.post("/put/<key>")
    def put(key: str) -> Any:
        current_cache().set(key, request.get_json())
        return "", 204

    @app.get("/get/<key>")
    def get(key: str) -> Any:
        return jsonify(value=current_cache().get(key))

    client = app.test_client()
    assert client.post("/put/user", json={"name": "alice"}).status_code == 204
    assert raw.exists(f"{namespace}:v:user")
    assert client.get("/get/user").get_json() == {"value": {"name": "alice"}}
    other = make_app()  # another "worker": cold L1, same namespace and server
    with other.app_context():
        assert current_cache().get("user") == {"name": "alice"}


# -- the view cache -------------------------------------------------------------------------


def cached_app(make_app: Callable[..., Flask], **decorator: Any) -> tuple[Flask, Counter]:
    """An app whose /items view counts its calls and echoes its query."""
    app = make_app()
    ext = FleetCacheExtension()  # decorators may come from an extension without init_app
    calls = Counter()

    @app.route("/items", methods=["GET", "HEAD", "POST"])
    @ext.cached_view(**decorator)
    def items() -> Any:
        n = calls.hit()
        return jsonify(call=n, args=sorted(request.args.items(multi=True)),
                       method=request.method)

    return app, calls


def test_get_runs_the_view_once_for_two_requests(
    make_app: Callable[..., Flask], raw: redis.Redis, namespace: str,
) -> None:
    app, calls = cached_app(make_app, ttl=60)
    client = app.test_client()
    first = client.get("/items?a=1")
    second = client.get("/items?a=1")
    assert calls.calls == 1
    assert first.status_code == second.status_code == 200
    assert first.data == second.data
    assert second.get_json()["call"] == 1
    assert second.content_type == "application/json"
    assert 0 < raw.pttl(f"{namespace}:v:view:/items?a=1") <= 60_000


def test_cached_response_is_served_to_another_worker_from_l2(
    make_app: Callable[..., Flask],
) -> None:
    app, calls = cached_app(make_app)
    assert app.test_client().get("/items").status_code == 200
    other, other_calls = cached_app(make_app)  # own FleetCache: cold L1, same namespace
    response = other.test_client().get("/items")
    assert (calls.calls, other_calls.calls) == (1, 0)
    assert response.get_json()["call"] == 1
    assert response.content_type == "application/json"


def test_key_is_path_plus_query_sorted_by_name(make_app: Callable[..., Flask]) -> None:
    app, calls = cached_app(make_app)
    client = app.test_client()
    client.get("/items?b=2&a=1")
    client.get("/items?a=1&b=2")
    assert calls.calls == 1
    client.get("/items?a=1&b=3")
    assert calls.calls == 2
    client.get("/items")
    assert calls.calls == 3
    # one parameter's repeated values keep their order: ?t=x&t=y may mean something else
    client.get("/items?t=x&t=y")
    client.get("/items?t=y&t=x")
    assert calls.calls == 5
    with app.app_context():
        assert current_cache().get("view:/items?a=1&b=2")["status"] == 200


def test_deleting_the_documented_key_makes_the_view_run_again(
    make_app: Callable[..., Flask],
) -> None:
    app, calls = cached_app(make_app, key_prefix="page:")
    client = app.test_client()
    client.get("/items?x=1")
    with app.app_context():
        assert current_cache().delete("page:/items?x=1")
    assert client.get("/items?x=1").get_json()["call"] == 2
    assert calls.calls == 2


def test_post_is_never_cached_and_does_not_touch_the_get_entry(
    make_app: Callable[..., Flask],
) -> None:
    app, calls = cached_app(make_app)
    client = app.test_client()
    assert client.post("/items").get_json()["call"] == 1
    assert client.post("/items").get_json()["call"] == 2
    assert client.get("/items").get_json() == {"call": 3, "args": [], "method": "GET"}
    assert client.post("/items").get_json()["call"] == 4
    assert client.get("/items").get_json()["call"] == 3
    assert calls.calls == 4


def test_head_shares_the_get_entry(make_app: Callable[..., Flask]) -> None:
    app, calls = cached_app(make_app)
    client = app.test_client()
    head = client.head("/items")
    assert head.status_code == 200
    assert head.data == b""
    assert client.get("/items").get_json()["method"] == "HEAD"
    assert calls.calls == 1


def test_non_200_responses_are_not_cached(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    ext = FleetCacheExtension()
    calls = Counter()
    outcomes: list[Any] = [("boom", 500), ("moved", 302, {"Location": "/x"}), "ok", "later"]

    @app.get("/flaky")
    @ext.cached_view()
    def flaky() -> Any:
        return outcomes[calls.hit() - 1]

    client = app.test_client()
    assert client.get("/flaky").status_code == 500
    assert client.get("/flaky").status_code == 302
    assert client.get("/flaky").data == b"ok"
    assert client.get("/flaky").data == b"ok"
    assert calls.calls == 3


def test_raised_http_errors_are_not_cached(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    ext = FleetCacheExtension()
    calls = Counter()

    @app.get("/maybe")
    @ext.cached_view()
    def maybe() -> Any:
        if calls.hit() == 1:
            abort(404)
        return "found"

    client = app.test_client()
    assert client.get("/maybe").status_code == 404
    assert client.get("/maybe").data == b"found"
    assert client.get("/maybe").data == b"found"
    assert calls.calls == 2


def test_responses_with_set_cookie_or_vary_are_not_cached(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    ext = FleetCacheExtension()
    calls = Counter()

    @app.get("/cookie")
    @ext.cached_view()
    def cookie() -> Any:
        response = flask.make_response(f"hello {calls.hit()}")
        response.set_cookie("session", "alice's")
        return response

    @app.get("/vary")
    @ext.cached_view()
    def vary() -> Any:
        calls.hit()
        return "by language", 200, {"Vary": "Accept-Language"}

    client = app.test_client()
    assert client.get("/cookie").data == b"hello 1"
    assert client.get("/cookie").data == b"hello 2"
    client.get("/vary")
    client.get("/vary")
    assert calls.calls == 4


def test_body_status_and_content_type_survive_the_round_trip(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    ext = FleetCacheExtension()
    body = bytes(range(256))

    @app.get("/blob")
    @ext.cached_view(strategy=CacheStrategy.REAL_TIME)
    def blob() -> Any:
        return body, 200, {"Content-Type": "application/octet-stream"}

    app.test_client().get("/blob")
    other = make_app()  # a cold L1: the entry is decoded from L2

    @other.get("/blob")
    @ext.cached_view(strategy=CacheStrategy.REAL_TIME)
    def never() -> Any:
        raise AssertionError("served from the cache")

    response = other.test_client().get("/blob")
    assert (response.status_code, response.content_type, response.data) == (
        200, "application/octet-stream", body)


def test_ttl_is_the_entry_lifetime(make_app: Callable[..., Flask]) -> None:
    app, calls = cached_app(make_app, ttl=1)
    client = app.test_client()
    client.get("/items")
    client.get("/items")
    assert calls.calls == 1
    time.sleep(1.2)
    client.get("/items")
    assert calls.calls == 2


def test_a_key_over_max_key_length_is_hashed_and_still_cached(
    make_app: Callable[..., Flask],
) -> None:
    app, calls = cached_app(lambda: make_app(FLEETCACHE_MAX_KEY_LENGTH=64))
    client = app.test_client()
    query = "q=" + "x" * 200
    assert client.get(f"/items?{query}").status_code == 200
    assert client.get(f"/items?{query}").get_json()["call"] == 1
    assert client.get(f"/items?{query}y").get_json()["call"] == 2
    assert calls.calls == 2


def test_concurrent_cold_requests_run_the_view_once(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    ext = FleetCacheExtension()
    calls = Counter()

    @app.get("/slow")
    @ext.cached_view()
    def slow() -> Any:
        calls.hit()
        time.sleep(0.2)
        return "done"

    bodies: list[bytes] = []
    start = threading.Barrier(6)

    def fetch() -> None:
        client = app.test_client()
        start.wait()
        bodies.append(client.get("/slow").data)

    run_threads([threading.Thread(target=fetch) for _ in range(6)], 10)
    assert bodies == [b"done"] * 6
    assert calls.calls == 1


def test_decorator_arguments_are_checked_when_decorating() -> None:
    ext = FleetCacheExtension()
    with pytest.raises(InvalidArgumentError):
        ext.cached_view(ttl=10, strategy=CacheStrategy.REAL_TIME)
    with pytest.raises(InvalidArgumentError):
        ext.cached_view(ttl=0)
    with pytest.raises(InvalidArgumentError):
        ext.cached_view(strategy=10)  # type: ignore[arg-type]


def test_a_foreign_value_under_the_key_is_not_served(make_app: Callable[..., Flask]) -> None:
    app, calls = cached_app(make_app)
    with app.app_context():
        current_cache().set("view:/items", {"body": "not bytes"})
    client = app.test_client()
    assert client.get("/items").get_json()["call"] == 1
    assert client.get("/items").get_json()["call"] == 2
    assert calls.calls == 2


def test_the_rendering_request_gets_the_views_own_response(
    make_app: Callable[..., Flask],
) -> None:
    """Only body, status and Content-Type are replayed; the miss keeps every header."""
    app = make_app()
    ext = FleetCacheExtension()

    @app.get("/tagged")
    @ext.cached_view()
    def tagged() -> Any:
        return "tagged", 200, {"X-Rendered": "yes", "Content-Type": "text/plain"}

    client = app.test_client()
    miss, hit = client.get("/tagged"), client.get("/tagged")
    assert miss.headers.get("X-Rendered") == "yes"
    assert hit.headers.get("X-Rendered") is None
    assert (hit.data, hit.content_type) == (b"tagged", "text/plain")


def test_an_encoded_question_mark_in_the_path_is_not_the_query(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    ext = FleetCacheExtension()
    calls = Counter()

    @app.get("/<path:page>")
    @ext.cached_view()
    def page(page: str) -> Any:
        calls.hit()
        return f"page={page} x={request.args.get('x')}"

    client = app.test_client()
    assert client.get("/a%3Fx=1").data == b"page=a?x=1 x=None"
    assert client.get("/a?x=1").data == b"page=a x=1"
    assert client.get("/caf%C3%A9").data == b"page=caf\xc3\xa9 x=None"
    assert client.get("/caf%C3%A9").data == b"page=caf\xc3\xa9 x=None"
    assert calls.calls == 3
