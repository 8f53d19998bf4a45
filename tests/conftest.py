"""Shared fixtures: real servers per kind (Redis 7 and Valkey 8 where both exist)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import fleetcache.core.config
from fleetcache import FleetCache
from fleetcache.testing import FakeClock, connections

from .helpers import closing_all
from .servers import DEAD_URL, Server, binaries

KINDS = sorted(binaries())


@pytest.fixture(scope="session", params=KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server shared by the session, one per kind; tests isolate by namespace."""
    srv = Server(binaries()[request.param]).start()
    yield srv
    srv.stop()


@pytest.fixture
def own_server() -> Iterator[Server]:
    """A server this test may kill, pause or restart (the first kind available)."""
    srv = Server(binaries()[KINDS[0]]).start()
    yield srv
    srv.stop()


@pytest.fixture
def no_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a server through the runner's environment or the 6379 default
    (``pytestmark = pytest.mark.usefixtures("no_url_env")`` in a module)."""
    monkeypatch.delenv("FLEETCACHE_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(fleetcache.core.config, "DEFAULT_URL", DEAD_URL)


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_cache(server: Server, namespace: str) -> Iterator[object]:
    """Factory of caches on the shared server, all in this test's namespace; closed after."""
    with closing_all() as keep:

        def factory(**options: object) -> FleetCache:
            options.setdefault("namespace", namespace)
            return keep(FleetCache(url=server.url, **options))

        yield factory


@pytest.fixture
def cache(make_cache: object) -> FleetCache:
    """A connected cache (invalidation bus subscribed)."""
    c: FleetCache = make_cache()  # type: ignore[operator]
    assert c.connect(wait=5.0)
    return c


@pytest.fixture
def raw(server: Server) -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared server, for checks behind the cache's back."""
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


@pytest.fixture
def pair(make_cache: Callable[..., FleetCache]) -> tuple[FleetCache, FleetCache]:
    """Two connected caches on one namespace (two "workers"): A writes, B reads."""
    a, b = make_cache(), make_cache()
    assert a.connect(wait=5.0)
    assert b.connect(wait=5.0)
    ca, cb = connections(a), connections(b)
    assert ca is not None and cb is not None and ca.sender_id != cb.sender_id
    return a, b


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock (monotonic 1000.0 at the start) that moves only on ``advance``."""
    return FakeClock()


@pytest.fixture
def clocked_pair(make_cache: Callable[..., FleetCache],
                 clock: FakeClock) -> tuple[FleetCache, FleetCache]:
    """Two connected caches (two workers) in this test's namespace, on one fake clock."""
    a, b = make_cache(clock=clock), make_cache(clock=clock)
    assert a.connect(wait=5.0) and b.connect(wait=5.0)
    return a, b


@pytest.fixture
def caches() -> Iterator[Callable[..., FleetCache]]:
    """Factory of caches on any URL (proxies, killed servers), one fresh namespace; closed."""
    ns = "c" + uuid.uuid4().hex[:12]
    with closing_all() as keep:

        def factory(url: str, **options: Any) -> FleetCache:
            options.setdefault("namespace", ns)
            return keep(FleetCache.from_url(url, **options))

        yield factory
