"""Redis Streams helpers on real servers: ids, trimming, ordering, blocking reads, validation."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from fleetcache import FleetCache, FleetCacheError, InvalidArgumentError

from ..servers import Server

MakeCache = Callable[..., FleetCache]
ID = re.compile(r"^\d+-\d+$")


@pytest.fixture
def raw(server: Server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def stream_key(cache: FleetCache, stream: str) -> str:
    return f"{cache.config.namespace}:s:{stream}"


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_publish_returns_increasing_ids(cache: FleetCache, raw: redis.Redis) -> None:
    ids = [cache.publish_to_stream("events", {"n": str(i)}) for i in range(5)]
    assert all(isinstance(i, str) and ID.match(i) for i in ids), ids
    assert [id_tuple(i) for i in ids] == sorted(id_tuple(i) for i in ids)
    assert len(set(ids)) == 5
    assert raw.xlen(stream_key(cache, "events")) == 5
    stored = raw.xrange(stream_key(cache, "events"))
    assert [e[0].decode() for e in stored] == ids
    assert [e[1] for e in stored] == [{b"n": str(i).encode()} for i in range(5)]


def test_maxlen_trims_approximately(cache: FleetCache, raw: redis.Redis) -> None:
    total = 5000  # one XADD per call: trimming must keep up on every publish
    for i in range(total):
        cache.publish_to_stream("big", {"i": str(i)}, maxlen=100)
    length = raw.xlen(stream_key(cache, "big"))
    assert 100 <= length <= 200, length
    newest = cache.read_stream_latest("big", count=1)
    assert newest[0][1] == {"i": str(total - 1)}


def test_default_maxlen_comes_from_config(make_cache: MakeCache, raw: redis.Redis) -> None:
    cache = make_cache(stream_maxlen=100)
    for i in range(600):
        cache.publish_to_stream("cfg", {"i": str(i)})
    assert 100 <= raw.xlen(stream_key(cache, "cfg")) <= 200


def test_read_latest_is_newest_first_with_count(cache: FleetCache) -> None:
    ids = [cache.publish_to_stream("s", {"n": str(i), "kind": "x"}) for i in range(6)]
    latest = cache.read_stream_latest("s", count=3)
    assert [e[0] for e in latest] == ids[::-1][:3]
    assert [e[1] for e in latest] == [{"n": str(i), "kind": "x"} for i in (5, 4, 3)]
    assert len(cache.read_stream_latest("s", count=100)) == 6
    assert len(cache.read_stream_latest("s")) == 6
    assert cache.read_stream_latest("never-written", count=3) == []


def test_read_from_zero_is_oldest_first(cache: FleetCache) -> None:
    ids = [cache.publish_to_stream("s", {"n": str(i)}) for i in range(5)]
    everything = cache.read_stream("s", last_id="0-0", count=100)
    assert [e[0] for e in everything] == ids
    assert [e[1]["n"] for e in everything] == ["0", "1", "2", "3", "4"]
    first_two = cache.read_stream("s", last_id="0-0", count=2)
    assert [e[0] for e in first_two] == ids[:2]
    rest = cache.read_stream("s", last_id=first_two[-1][0], count=100)
    assert [e[0] for e in rest] == ids[2:]
    assert cache.read_stream("s", last_id=ids[-1], count=10) == []
    assert cache.read_stream("empty", last_id="0-0") == []
    assert cache.read_stream("s", last_id="$") == []  # non-blocking "$": nothing is newer


def test_blocking_read_returns_an_entry_published_meanwhile(cache: FleetCache) -> None:
    published: list[str] = []
    errors: list[BaseException] = []

    def publisher() -> None:
        try:
            time.sleep(0.1)
            published.append(cache.publish_to_stream("live", {"hello": "world"}))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=publisher)
    start = time.monotonic()
    thread.start()
    got = cache.read_stream("live", last_id="$", block_ms=5000)
    took = time.monotonic() - start
    thread.join(2.0)
    assert not errors, errors
    assert [e[0] for e in got] == published
    assert got[0][1] == {"hello": "world"}
    assert took < 1.0, f"blocking read took {took:.2f} s for an entry published at 0.1 s"


def test_blocking_read_longer_than_socket_timeout_returns_empty(cache: FleetCache) -> None:
    assert cache.config.socket_timeout < 0.8
    start = time.monotonic()
    got = cache.read_stream("quiet", last_id="$", block_ms=800)
    took = time.monotonic() - start
    assert got == []
    assert 0.75 <= took < 1.5, took
    # The connection it borrowed is clean: plain commands still work right after.
    entry_id = cache.publish_to_stream("quiet", {"a": "b"})
    assert cache.read_stream("quiet", last_id="0-0") == [(entry_id, {"a": "b"})]
    assert cache.health().redis_ok


def test_list_of_pairs_fields_are_accepted(cache: FleetCache) -> None:
    entry_id = cache.publish_to_stream("s", [("a", "1"), ("b", "2")])
    assert cache.read_stream_latest("s", count=1) == [(entry_id, {"a": "1", "b": "2"})]
    gen_id = cache.publish_to_stream("s", ((k, v) for k, v in [("g", "x")]))
    assert cache.read_stream_latest("s", count=1) == [(gen_id, {"g": "x"})]


def test_unicode_fields_round_trip(cache: FleetCache) -> None:
    fields = {"naïve": "日本語", "emoji": "🙂", "empty-value": ""}
    entry_id = cache.publish_to_stream("u", fields)
    assert cache.read_stream("u", last_id="0-0") == [(entry_id, fields)]


BAD_PUBLISH: list[Any] = [
    pytest.param({"n": 1}, {}, id="int-value"),
    pytest.param({1: "n"}, {}, id="int-field"),
    pytest.param({"n": b"bytes"}, {}, id="bytes-value"),
    pytest.param({"ok": "1", "n": None}, {}, id="none-value-after-a-good-one"),
    pytest.param([("a", "1"), ("b", 2)], {}, id="pairs-with-int"),
    pytest.param([("a", "1", "x")], {}, id="triple"),
    pytest.param(5, {}, id="not-iterable"),
    pytest.param({}, {}, id="empty-dict"),
    pytest.param([], {}, id="empty-list"),
    pytest.param({"a": "1"}, {"maxlen": 0}, id="maxlen-0"),
    pytest.param({"a": "1"}, {"maxlen": -1}, id="maxlen-negative"),
    pytest.param({"a": "1"}, {"maxlen": 1.5}, id="maxlen-float"),
    pytest.param({"a": "1"}, {"maxlen": True}, id="maxlen-bool"),
]


@pytest.mark.parametrize(("fields", "kwargs"), BAD_PUBLISH)
def test_bad_publish_raises_and_writes_nothing(
    cache: FleetCache, raw: redis.Redis, fields: Any, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InvalidArgumentError):
        cache.publish_to_stream("bad", fields, **kwargs)
    assert raw.exists(stream_key(cache, "bad")) == 0


@pytest.mark.parametrize("count", [0, -1, True, 2.0])
def test_bad_count_raises(cache: FleetCache, count: Any) -> None:
    cache.publish_to_stream("s", {"a": "1"})
    with pytest.raises(InvalidArgumentError):
        cache.read_stream_latest("s", count=count)
    with pytest.raises(InvalidArgumentError):
        cache.read_stream("s", last_id="0-0", count=count)


@pytest.mark.parametrize(
    "kwargs",
    [{"last_id": ""}, {"last_id": 0}, {"block_ms": 0}, {"block_ms": -5}, {"block_ms": 1.5}],
)
def test_bad_read_arguments_raise(cache: FleetCache, kwargs: dict[str, Any]) -> None:
    start = time.monotonic()
    with pytest.raises(InvalidArgumentError):
        cache.read_stream("s", **kwargs)
    assert time.monotonic() - start < 0.5  # rejected up front, not after blocking


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_stream_names_raise(cache: FleetCache, name: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        cache.publish_to_stream(name, {"a": "1"})
    with pytest.raises(InvalidArgumentError):
        cache.read_stream_latest(name)


def test_invalid_argument_error_is_a_value_error_and_a_fleetcache_error(
    cache: FleetCache,
) -> None:
    with pytest.raises(ValueError):
        cache.publish_to_stream("s", {})
    with pytest.raises(FleetCacheError):
        cache.publish_to_stream("s", {})


def test_streams_of_one_namespace_are_invisible_to_another(
    make_cache: MakeCache, namespace: str
) -> None:
    a = make_cache()
    b = make_cache(namespace=namespace + "-b")
    a.publish_to_stream("shared-name", {"from": "a"})
    assert b.read_stream_latest("shared-name") == []
    assert b.read_stream("shared-name", last_id="0-0") == []
    b_id = b.publish_to_stream("shared-name", {"from": "b"})
    assert [e[1] for e in a.read_stream("shared-name", last_id="0-0")] == [{"from": "a"}]
    assert b.read_stream("shared-name", last_id="0-0") == [(b_id, {"from": "b"})]
    a.clear()  # clear() leaves streams alone
    assert len(a.read_stream_latest("shared-name")) == 1
