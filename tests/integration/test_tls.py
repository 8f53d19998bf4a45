"""``rediss://``: fleetcache's connections over TLS are ready when the pool hands them out.

A TLS 1.3 server sends session tickets right after the handshake, and fleetcache's
connections send nothing while connecting (RESP2, no CLIENT SETINFO): without a PING at
connect (fleetcache.redis.tls) redis-py's pool refused most fresh connections ("Connection
not ready": 36 of 50 measured). Real redis-server with TLS on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcache import FleetCache
from fleetcache.testing import l1_entry

from ..servers import Server, binaries
from ..tls import certificate, tls_options
from ..waiting import wait_until


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = binaries().get("redis")
    if exe is None:
        pytest.skip("TLS needs redis-server (the embedded Valkey is built without it)")
    cert, key = certificate(Path(tmp_path_factory.mktemp("tls")))
    port, options = tls_options(cert, key)
    server = Server(exe, extra=options).start()
    yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    server.stop()


def test_every_fresh_tls_connection_serves_its_first_command(tls_url: str,
                                                             namespace: str) -> None:
    for i in range(30):  # 30 processes' worth of first connections
        with FleetCache.from_url(tls_url, namespace=namespace, stats_interval=0) as cache:
            cache.set(f"k{i}", i)
            assert cache.get_many([f"k{i}"]) == {f"k{i}": i}


def test_invalidations_travel_over_tls(tls_url: str, namespace: str) -> None:
    a = FleetCache.from_url(tls_url, namespace=namespace)
    b = FleetCache.from_url(tls_url, namespace=namespace)
    try:
        assert a.connect(wait=5.0) and b.connect(wait=5.0)
        a.set("k", 1)
        assert wait_until(lambda: b.get("k") == 1, 2.0)
        a.set("k", 2)
        # The read that sees 2 may race the notice and not be promoted: read until L1 has it.
        assert wait_until(lambda: b.get("k") == 2 and l1_entry(b, "k") is not None, 2.0)
        # Reads renew the lease on an idle TLS listener too (TLS buffers count as input).
        lag = b.config.max_listener_lag
        before = b.stats()
        for _ in range(5):
            time.sleep(lag * 1.5)  # the lease runs out while the listener sleeps
            assert b.get("k") == 2
        after = b.stats()
        # At most one wait (a watchdog PONG may be in the listener's hands at that moment,
        # and that read may then go to Redis); a listener that readers could not renew for
        # would make every one of the five wait.
        assert after.listener_waits - before.listener_waits <= 1
        assert after.l1_hits - before.l1_hits >= 4
    finally:
        a.close()
        b.close()
