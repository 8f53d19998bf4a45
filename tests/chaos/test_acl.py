"""Authenticated servers: an ACL user (default user off) or requirepass.

Promises: with the right credentials everything works (values, fleet invalidation over
pub/sub, the Redlock of get_or_compute, streams); with wrong ones writes raise a clear
``FleetCacheError``, reads degrade to a miss, ``health()`` says why; and the password shows
up nowhere: not in ``repr(cache)``, not in any raised exception or its chain, not in any log
record (DEBUG and up, every logger).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fleetcache import BackendError, FleetCache, FleetCacheError

from ..helpers import run_threads, timed
from ..integration.procs import hold
from ..servers import Server, binaries
from .conftest import wait_until

PASSWORD = "apppass"
ODD_PASSWORD = "p@ss:w/rd#1%x"  # needs percent-encoding in a URL
WRONG = "Wr0ng-Secret-9f3b"
ACL = ("--user", "default", "off", "--user", "app", "on", f">{PASSWORD}", "~*", "&*", "+@all",
       "--user", "odd", "on", f">{ODD_PASSWORD}", "~*", "&*", "+@all",
       "--user", "nochan", "on", f">{PASSWORD}", "~*", "resetchannels", "+@all")
# deploy/README.md's least-privilege user, for namespace LEAST_NS (keep the two in step).
LEAST_NS = "shop"
LEAST = ("--user", "least", "on", f">{PASSWORD}", "resetkeys", f"~{LEAST_NS}:*",
         f"~redlock:{LEAST_NS}:*", "resetchannels", f"&{LEAST_NS}:*", "-@all", "+@read",
         "+@write", "+@pubsub", "+@scripting", "+@stream", "+ping", "-@dangerous")
CALL_BOUND = 1.5


@pytest.fixture(params=sorted(binaries()))
def acl_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(binaries()[request.param], extra=ACL).start()
    yield srv
    srv.stop()


AUTH_SERVERS = [(kind, "acl") for kind in sorted(binaries())] + [
    (sorted(binaries())[0], "requirepass")]


@pytest.fixture(params=AUTH_SERVERS, ids=[f"{k}-{m}" for k, m in AUTH_SERVERS])
def auth_server(request: pytest.FixtureRequest) -> Iterator[tuple[Server, str]]:
    kind, mode = request.param
    extra = ACL if mode == "acl" else ("--requirepass", PASSWORD)
    srv = Server(binaries()[kind], extra=extra).start()
    yield srv, mode
    srv.stop()


def url(server: Server, user: str, password: str | None) -> str:
    cred = "" if password is None else f"{user}:{quote(password, safe='')}@"
    return f"redis://{cred}127.0.0.1:{server.port}/0"


def texts_of(exc: BaseException) -> list[str]:
    """str, repr, args and the formatted traceback of an exception and all it chains to."""
    out = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e), repr(e.args)]
        todo += [e.__cause__, e.__context__]
    return out


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter()
    out = []
    for record in caplog.records:
        out += [record.getMessage(), repr(record.args)]
        if record.exc_info:
            out.append(formatter.formatException(record.exc_info))
    return out


def assert_secret_absent(secret: str, texts: list[str]) -> None:
    forms = {secret, quote(secret, safe="")}
    leaks = [t for t in texts for form in forms if form in t]
    assert not leaks, f"password leaked: {leaks[:3]}"


def test_right_credentials_work_end_to_end(
    auth_server: tuple[Server, str], caches: Callable[..., FleetCache],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server, mode = auth_server
    credentials = ([("app", PASSWORD), ("odd", ODD_PASSWORD)] if mode == "acl"
                   else [("", PASSWORD)])
    for user, secret in credentials:
        end_to_end(server, user, secret, caches)
        assert_secret_absent(secret, log_texts(caplog))


def end_to_end(
    server: Server, user: str, secret: str, caches: Callable[..., FleetCache],
    ns: str | None = None,
) -> None:
    ns = ns or "acl" + uuid.uuid4().hex[:10]  # one namespace per user: cold keys start cold
    a = caches(url(server, user, secret), namespace=ns)
    b = caches(url(server, user, secret), namespace=ns)
    assert a.connect(wait=5.0) and b.connect(wait=5.0), "bus not subscribed"
    assert a.health().ok and b.health().ok

    # Values and fleet invalidation (pub/sub needs the channel permission).
    a.set("k", "v1")
    assert hold(b, "k") == "v1"
    a.set("k", "v2")
    assert wait_until(lambda: b.get("k") == "v2", 2.0), "invalidation did not reach b"
    assert hold(b, "k") == "v2"
    assert a.delete("k") is True
    assert wait_until(lambda: b.get("k", "gone") == "gone", 2.0)

    # get_or_compute: 3 threads per cache race for a cold key; the Redlock (pottery, EVAL
    # under the ACL user) lets exactly one compute run, fleet-wide.
    computes: list[int] = []
    barrier = threading.Barrier(6)
    results: list[Any] = []

    def compute() -> dict[str, int]:
        computes.append(1)
        time.sleep(0.2)
        return {"answer": 42}

    def race(cache: FleetCache) -> None:
        barrier.wait(5)
        results.append(cache.get_or_compute("cold", compute))

    run_threads([threading.Thread(target=race, args=(c,)) for c in (a, b) for _ in range(3)],
                10)
    assert results == [{"answer": 42}] * 6
    assert len(computes) == 1, f"{len(computes)} computes: the Redlock did not hold"
    assert a.stats().redis_errors == 0 and b.stats().redis_errors == 0

    # Streams, blocking read included.
    got: list[Any] = []
    reader = threading.Thread(
        target=lambda: got.extend(b.read_stream("ev", last_id="$", block_ms=3000)))
    reader.start()
    time.sleep(0.2)
    entry_id = a.publish_to_stream("ev", {"event": "e1"})
    reader.join(5)
    assert got == [(entry_id, {"event": "e1"})]
    assert b.read_stream_latest("ev", 1) == [(entry_id, {"event": "e1"})]

    assert_secret_absent(secret, [repr(a), str(a), repr(a.config), a.config.safe_url,
                                  str(a.health())])


@pytest.mark.parametrize("kind", sorted(binaries()))
def test_least_privilege_user_of_the_deploy_guide(
    kind: str, caches: Callable[..., FleetCache]
) -> None:
    """The ACL in deploy/README.md is enough for the whole API, and no more: another
    namespace is refused."""
    guide = (Path(__file__).resolve().parents[2] / "deploy" / "README.md").read_text()
    rules = " ".join(LEAST[2:]).replace(f">{PASSWORD}", ">S3cret")
    assert f"ACL SETUSER fleetcache-app {rules}" in guide, "deploy/README.md's ACL changed"
    server = Server(binaries()[kind], extra=LEAST).start()
    try:
        end_to_end(server, "least", PASSWORD, caches, ns=LEAST_NS)
        cache = caches(url(server, "least", PASSWORD), namespace=LEAST_NS)
        cache.set("x", 1)
        assert cache.add("y", 2)
        assert cache.get_many(["x", "y"]) == {"x": 1, "y": 2}
        assert cache.clear() >= 2
        assert cache.stats().redis_errors == 0
        other = caches(url(server, "least", PASSWORD), namespace="other")
        with pytest.raises(BackendError):
            other.set("x", 1)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("user", "secret"),
    [("app", WRONG), ("app", "p@ss/" + WRONG), ("nobody", WRONG), ("", None)],
    ids=["wrong-password", "wrong-odd-password", "unknown-user", "no-credentials"],
)
def test_wrong_credentials_fail_clearly_and_never_show_the_password(
    acl_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture,
    user: str, secret: str | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    cache = caches(url(acl_server, user, secret))
    texts: list[str] = []

    exc, took = timed(lambda: cache.set("k", "v"))
    assert isinstance(exc, FleetCacheError), f"set: {exc!r}"
    assert took < CALL_BOUND, f"set took {took:.2f} s to fail"
    assert re.search(r"auth|password|WRONGPASS|NOAUTH", str(exc), re.IGNORECASE), (
        f"unclear error: {exc}")
    texts += texts_of(exc)
    for name, fn in [("delete", lambda: cache.delete("k")), ("clear", cache.clear),
                     ("publish_to_stream", lambda: cache.publish_to_stream("s", {"a": "b"})),
                     ("read_stream_latest", lambda: cache.read_stream_latest("s"))]:
        exc, took = timed(fn)
        assert isinstance(exc, BackendError), f"{name}: {exc!r}"
        assert took < CALL_BOUND
        texts += texts_of(exc)

    errors = cache.stats().redis_errors
    for fn, expected in [(lambda: cache.get("k", "dflt"), "dflt"),
                         (lambda: cache.get_many(["k", "j"]), {}),
                         (lambda: cache.get_or_compute("gc", lambda: "local"), "local")]:
        value, took = timed(fn)
        assert value == expected, f"a read did not degrade: {value!r}"
        assert took < CALL_BOUND
    assert cache.stats().redis_errors >= errors + 3

    assert not cache.connect(wait=0.5), "the bus subscribed with wrong credentials?"
    health = cache.health()
    assert not health.redis_ok and not health.ok and not health.bus_connected
    assert health.error and re.search(r"auth|password|WRONGPASS|NOAUTH", health.error,
                                      re.IGNORECASE), health.error
    texts += [repr(cache), str(cache), repr(cache.config), cache.config.safe_url, str(health),
              health.error, *log_texts(caplog)]
    assert any(r.name == "fleetcache" for r in caplog.records), "nothing logged the failure"
    for s in filter(None, [secret, PASSWORD, ODD_PASSWORD]):
        assert_secret_absent(s, texts)


def test_user_without_channel_permission(
    acl_server: Server, caches: Callable[..., FleetCache]
) -> None:
    """An ACL user that may not use pub/sub: writes cannot be announced, so they fail
    clearly; reads work (from L2; L1 only for degraded_l1_ttl); health shows the bus down."""
    cache = caches(url(acl_server, "nochan", PASSWORD))
    other = caches(url(acl_server, "app", PASSWORD))
    exc, _ = timed(lambda: cache.set("k", "v"))
    assert isinstance(exc, BackendError), exc
    assert re.search(r"permission|NOPERM|can't publish", str(exc), re.IGNORECASE), (
        f"unclear: {exc}")
    assert other.get("k") is None, "a write without its notice was left in L2"
    assert not cache.connect(wait=0.5)
    health = cache.health()
    assert health.redis_ok and not health.bus_connected and not health.ok, health
    other.set("k", "v")
    assert cache.get("k") == "v"
    assert cache.stats().redis_errors == 0


def test_password_with_unescaped_reserved_characters_never_shows(
    acl_server: Server, caches: Callable[..., FleetCache], caplog: pytest.LogCaptureFixture,
) -> None:
    """Generated passwords (base64) often hold "/" and "+". Pasted into a URL unescaped,
    the URL is malformed; fleetcache may refuse it (ConfigError) or fail its calls, but the
    password, or any 4+ character piece of it, must not be shown anywhere."""
    caplog.set_level(logging.DEBUG)
    secret = "Zm9vYmFy/cXV4eA+bGVh?a2Vk#c2VjcmV0"
    pieces = [p for p in re.split(r"[/?#+]", secret) if len(p) >= 4]
    texts: list[str] = []
    try:
        cache = caches(f"redis://app:{secret}@127.0.0.1:{acl_server.port}/0")
    except FleetCacheError as exc:  # refusing the URL is fine, if it says nothing secret
        texts += texts_of(exc)
    else:
        texts += [repr(cache), str(cache), repr(cache.config), cache.config.safe_url]
        for fn in (lambda: cache.get("k"), lambda: cache.set("k", 1), cache.health):
            try:
                result = fn()
            except Exception as exc:
                texts += texts_of(exc)
            else:
                texts.append(str(result))
        time.sleep(0.2)  # let the listener try (and log) once
    texts += log_texts(caplog)
    leaks = [(piece, text[:200]) for text in texts for piece in pieces if piece in text]
    assert not leaks, f"password pieces shown: {leaks[:3]}"
