"""The proxy itself: each fault does what the other chaos tests rely on (raw redis-py clients)."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..servers import Server
from .conftest import wait_until
from .proxy import Proxy


def raw(url: str, timeout: float = 0.5) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


def test_passes_traffic_and_large_values(proxy: Proxy) -> None:
    client = raw(proxy.url())
    blob = bytes(range(256)) * 8192  # 2 MiB: many chunks, partial sends
    client.set("big", blob)
    assert client.get("big") == blob
    assert client.ping()
    assert proxy.accepted >= 1


def test_latency_delays_each_reply(proxy: Proxy) -> None:
    client = raw(proxy.url(), timeout=2.0)
    client.ping()
    proxy.set_latency(down=0.15)
    start = time.monotonic()
    client.ping()
    took = time.monotonic() - start
    assert 0.14 <= took < 1.0, took
    proxy.set_latency()
    start = time.monotonic()
    client.ping()
    assert time.monotonic() - start < 0.1


def test_reset_sends_rst_to_the_client(proxy: Proxy) -> None:
    client = raw(proxy.url())
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command("PING")
        assert conn.read_response() == b"PONG"
        assert proxy.reset() == 1
        with pytest.raises(redis.ConnectionError, match="reset by peer"):
            conn.send_command("PING")
            conn.read_response()
    finally:
        client.connection_pool.release(conn)
    assert client.ping()  # a new connection works at once


def test_refuse_cuts_and_refuses_until_healed(proxy: Proxy) -> None:
    client = raw(proxy.url())
    assert client.ping()
    assert proxy.refuse() == 1
    for _ in range(2):  # redis-py retries once on a dead pooled connection
        with pytest.raises(redis.ConnectionError):
            client.ping()
    assert proxy.refused >= 2
    proxy.heal()
    assert client.ping()


def test_blackhole_is_silent_and_heal_delivers_what_was_held(
    proxy: Proxy, own_server: Server
) -> None:
    client = raw(proxy.url(), timeout=0.3)
    client.set("k", "before")
    assert proxy.blackhole("all", new_connections=False) == 1
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command("SET", "k", "held")  # sent into the hole: no error, no reply
        assert not conn.can_read(timeout=0.3)
        direct = raw(own_server.url)
        assert direct.get("k") == b"before", "a held write reached the server"
        # New connections pass when new_connections=False.
        assert raw(proxy.url()).get("k") == b"before"
        assert proxy.heal() == 1
        assert wait_until(lambda: direct.get("k") == b"held", 2.0), "held bytes were dropped"
        assert conn.read_response() == b"OK"
    finally:
        client.connection_pool.release(conn)


def test_blackhole_of_new_connections(proxy: Proxy) -> None:
    proxy.blackhole("all", new_connections=True)
    with pytest.raises(redis.TimeoutError):
        raw(proxy.url(), timeout=0.2).ping()
    proxy.heal()
    assert raw(proxy.url()).ping()


def test_pubsub_scope_holds_only_subscribers(proxy: Proxy, own_server: Server) -> None:
    client = raw(proxy.url())
    ps = client.pubsub()
    ps.subscribe("ch")
    assert ps.get_message(timeout=1.0)["type"] == "subscribe"
    assert [c.subscribed for c in proxy.connections()].count(True) == 1
    assert proxy.blackhole("pubsub") == 1
    direct = raw(own_server.url)
    direct.publish("ch", "lost?")
    assert ps.get_message(timeout=0.3) is None, "a held subscriber got a message"
    assert client.get("k") is None  # the data connection still works
    # A new subscriber is held as soon as it sends SUBSCRIBE.
    ps2 = raw(proxy.url()).pubsub()
    ps2.subscribe("ch")
    assert ps2.get_message(timeout=0.3) is None
    proxy.heal()
    assert ps.get_message(timeout=1.0)["data"] == b"lost?"
    assert ps2.get_message(timeout=1.0)["type"] == "subscribe"
    ps.close()
    ps2.close()
