"""CommandLane: hot commands on held connections, with the pool's safety kept.

What must hold: one connection serves a run of commands (that is the point); a command
abandoned mid-flight never hands its late reply to the next caller; an error reply keeps
the connection; NOSCRIPT falls back to EVAL; the idle list stays within ``keep`` and the
pool's limit still bounds the total.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from fleetcache.core.config import CacheConfig
from fleetcache.redis.client import make_client
from fleetcache.redis.lane import CommandLane, packer

from ..helpers import run_threads
from ..servers import Server


@pytest.fixture
def client(server: Server) -> Iterator[redis.Redis]:
    c = make_client(CacheConfig(url=server.url, socket_timeout=0.25, max_connections=8))
    yield c
    c.connection_pool.disconnect()


@pytest.fixture
def lane(client: redis.Redis, raw: redis.Redis, namespace: str) -> CommandLane:
    """A lane whose one connection is named after the test (to find it in CLIENT LIST), with
    ``{namespace}:k`` set to ``v``."""
    lane = CommandLane(client.connection_pool, keep=4)
    lane.execute("CLIENT", "SETNAME", namespace)
    raw.set(f"{namespace}:k", b"v")
    return lane


def connections_named(raw: redis.Redis, name: str) -> int:
    return sum(1 for c in raw.client_list() if c.get("name") == name)


def test_a_run_of_commands_uses_one_connection(
    lane: CommandLane, raw: redis.Redis, namespace: str
) -> None:
    for _ in range(50):
        assert lane.execute("GET", f"{namespace}:k") == b"v"
    assert connections_named(raw, namespace) == 1
    assert lane.execute("CLIENT", "GETNAME") == namespace.encode()


def test_a_timed_out_command_never_leaks_its_reply_to_the_next(
    lane: CommandLane, raw: redis.Redis, namespace: str
) -> None:
    with pytest.raises(redis.TimeoutError):
        lane.execute("BLPOP", f"{namespace}:q", "1")  # blocks past socket_timeout
    raw.rpush(f"{namespace}:q", b"late")  # would be the BLPOP's reply on a kept socket
    time.sleep(1.1)
    assert lane.execute("GET", f"{namespace}:k") == b"v"
    assert raw.lpop(f"{namespace}:q") == b"late"  # the abandoned BLPOP took nothing


def test_an_error_reply_keeps_the_connection(
    lane: CommandLane, raw: redis.Redis, namespace: str
) -> None:
    raw.set(f"{namespace}:s", b"text")
    with pytest.raises(redis.ResponseError):
        lane.execute("INCR", f"{namespace}:s")
    assert lane.execute("CLIENT", "GETNAME") == namespace.encode()
    assert connections_named(raw, namespace) == 1


def test_noscript_falls_back_to_eval_and_reloads(
    client: redis.Redis, raw: redis.Redis, namespace: str
) -> None:
    lane = CommandLane(client.connection_pool, keep=4)
    script = client.register_script(f"return 'ran {namespace}'")
    raw.script_flush()
    assert lane.run_script(script, [], []) == f"ran {namespace}".encode()
    assert raw.script_exists(script.sha) == [True]
    assert lane.run_script(script, [], []) == f"ran {namespace}".encode()


def test_a_killed_connection_is_replaced_by_the_retry(
    lane: CommandLane, raw: redis.Redis, namespace: str
) -> None:
    raw.client_kill_filter(_type="normal", skipme=True)
    assert lane.execute("GET", f"{namespace}:k") == b"v"


def test_idle_connections_stay_within_keep_and_the_pool_bounds_the_total(
    client: redis.Redis, raw: redis.Redis, namespace: str
) -> None:
    before = len(raw.client_list())
    pool = client.connection_pool
    lane = CommandLane(pool, keep=2)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                lane.execute("BLPOP", f"{namespace}:nothing", "0.01")
        except BaseException as exc:
            errors.append(exc)

    run_threads([threading.Thread(target=worker) for _ in range(6)], 30)
    assert not errors
    # Six callers at once needed more than `keep` connections; the rest went to the pool.
    assert len(lane._idle) <= 2 < len(pool._connections)  # type: ignore[attr-defined]
    assert len(raw.client_list()) <= before + 8  # none opened outside the pool's limit
    lane.close()
    assert not lane._idle


def test_close_returns_connections_to_the_pool(client: redis.Redis) -> None:
    pool = client.connection_pool
    lane = CommandLane(pool, keep=4)
    lane.execute("PING")
    in_use = pool.max_connections - pool.pool.qsize()  # type: ignore[attr-defined]
    lane.close()
    assert pool.max_connections - pool.pool.qsize() == in_use - 1  # type: ignore[attr-defined]


def test_hiredis_packs_what_the_clients_encoder_would(server: Server, namespace: str) -> None:
    """A non-ASCII key and every argument type land as redis-py itself would send them; a
    client with another encoding is packed by redis-py (hiredis only speaks UTF-8)."""
    assert packer({}) is not None
    assert packer({"encoding": "latin-1"}) is None
    assert packer({"encoding": "utf-8", "encoding_errors": "replace"}) is None
    for encoding in ("utf-8", "latin-1"):
        c = redis.Redis.from_url(server.url, encoding=encoding)
        lane = CommandLane(c.connection_pool, keep=1)
        key = f"{namespace}:clé-{encoding}"
        assert lane.execute("SET", key, "vé") == b"OK"
        assert c.get(key) == "vé".encode(encoding)  # the client's own encoding, both ways
        assert lane.execute("SET", key, 3) == b"OK" and c.get(key) == b"3"
        assert lane.execute("SET", key, 2.5) == b"OK" and c.get(key) == b"2.5"
        with pytest.raises(redis.DataError):  # redis-py's error, not hiredis' TypeError
            lane.execute("SET", key, None)
        assert lane.execute("GET", key) == b"2.5"  # the connection is still in sync
        c.connection_pool.disconnect()
