"""Property tests of key handling (README: "Keys are non-empty str of at most 1024 characters";
``@cached``: "key = function name + args (msgpack, hashed)", "stable across processes and
restarts" in fleetcache/decorator.py).

Round trips run against fakeredis's TCP server (real sockets, real redis-py pool and
listener); validation is checked on a cache whose server does not exist, so any Redis call
made before the key is refused would show as a ``BackendError`` or a counted read error.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleetcache import FleetCache, InvalidKeyError

from ..helpers import namespace_data_keys, serving
from ..servers import free_port

fakeredis = pytest.importorskip("fakeredis")
pytest.importorskip("lupa", reason="pottery's Redlock needs Lua: install fakeredis[lua]")

MAX_KEY = 64
ABSENT = "<absent>"
NOTICE_TIMEOUT = 5.0
REPO = Path(__file__).resolve().parents[2]

# database=None: leave no .hypothesis directory behind; deadline=None: a shared machine.
PROPERTY = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
FAST_PROPERTY = settings(max_examples=200, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow])

# Characters that mean something to Redis globs, RESP, shells or our own "{ns}:v:{key}".
SPECIAL = " \n\r\t*?[]^-!\\:{}\x00"
key_chars = st.characters(exclude_categories=["Cs"]) | st.sampled_from(SPECIAL)
valid_keys = st.text(alphabet=key_chars, min_size=1, max_size=MAX_KEY)
overlong_keys = st.text(alphabet=key_chars, min_size=MAX_KEY + 1, max_size=MAX_KEY + 40)
bad_keys = st.one_of(
    st.integers(), st.binary(), st.none(), st.booleans(), st.floats(allow_nan=False),
    st.tuples(st.text(max_size=3)), st.lists(st.text(max_size=3), max_size=2),
    st.just(""), overlong_keys,
)

# Arguments of @cached functions: MessagePack-encodable, with no two spellings of one value
# (no tuples, which encode like lists; ints within 64 bits, as msgspec requires).
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8),
)
arg_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)
call_args = st.tuples(
    st.lists(arg_values, max_size=3).map(tuple),
    st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=3), arg_values,
                    max_size=3),
)


# -- fixtures --------------------------------------------------------------------------------

class _NoDelayServer(fakeredis.TcpFakeServer):  # type: ignore[misc]
    """fakeredis's TCP server with TCP_NODELAY: it writes a reply in several small chunks,
    which Nagle's algorithm and delayed ACKs turn into ~40 ms per MULTI/EXEC (real Redis
    sets TCP_NODELAY itself)."""

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    """A fakeredis TCP server on a free loopback port, served from a daemon thread."""
    with serving(_NoDelayServer(("127.0.0.1", 0))) as url:
        yield url


@pytest.fixture(scope="module")
def raw(fake_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fake_url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture(scope="module")
def pair(fake_url: str) -> Iterator[tuple[FleetCache, FleetCache]]:
    """(writer, reader): two connected caches in one namespace, for the whole module
    (hypothesis runs many examples per test; each example cleans up after itself)."""
    namespace = "p" + uuid.uuid4().hex[:12]
    made = [FleetCache.from_url(fake_url, namespace=namespace, max_key_length=MAX_KEY)
            for _ in range(2)]
    for cache in made:
        assert cache.connect(wait=5.0), "invalidation bus did not subscribe"
    yield made[0], made[1]
    for cache in made:
        cache.close()


@pytest.fixture(scope="module")
def nowhere() -> Iterator[FleetCache]:
    """A cache whose server does not exist (a free port nobody listens on), never used
    successfully: any Redis call would fail loudly or be counted in redis_errors."""
    cache = FleetCache.from_url(f"redis://127.0.0.1:{free_port()}/0",
                                namespace="nowhere", max_key_length=MAX_KEY)
    yield cache
    cache.close()


# -- helpers ---------------------------------------------------------------------------------

def notices(cache: FleetCache) -> int:
    return cache.stats().invalidations_received


def told(reader: FleetCache, before: int, count: int = 1) -> None:
    """Wait until ``reader`` has applied ``count`` more notices (so its reads do not race)."""
    deadline = time.monotonic() + NOTICE_TIMEOUT
    while notices(reader) < before + count:
        assert time.monotonic() < deadline, (
            f"reader applied {notices(reader) - before} of {count} notices in {NOTICE_TIMEOUT} s")
        time.sleep(0.001)
    assert notices(reader) == before + count


def write(reader: FleetCache, op: Callable[[], Any], count: int = 1) -> Any:
    before = notices(reader)
    result = op()
    told(reader, before, count)
    return result


def l2_name(cache: FleetCache, key: str) -> bytes:
    """Where ``key``'s value lives in Redis: ``{namespace}:v:{key}``, UTF-8."""
    return f"{cache.config.namespace}:v:{key}".encode()


def listener_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fleetcache-invalidation")


# -- any valid key -----------------------------------------------------------------------------

@pytest.mark.slow
@PROPERTY
@given(key=valid_keys)
@example(key="k" * MAX_KEY)
@example(key="\U0001f600" * MAX_KEY)  # 64 characters, 256 UTF-8 bytes
@example(key="*")
@example(key="?")
@example(key="[")
@example(key=":")
@example(key=" ")
@example(key="\n")
@example(key="\r\n*3\r\n")  # RESP framing inside a key
@example(key="\x00")
def test_any_valid_key_round_trips(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis, key: str
) -> None:
    writer, reader = pair
    assert reader.get(key, ABSENT) == ABSENT
    write(reader, lambda: writer.set(key, ["v1", key]))
    assert raw.get(l2_name(writer, key)) is not None, "not stored under {ns}:v:{key}"
    assert reader.get(key) == ["v1", key]  # from L2, promoted
    hits = reader.stats().l1_hits
    assert reader.get(key) == ["v1", key]
    assert reader.stats().l1_hits == hits + 1, "the promoted value was not served from L1"
    # The invalidation names this very key: it must drop it from the reader's L1.
    write(reader, lambda: writer.set(key, ["v2", key]))
    assert reader.get(key) == ["v2", key]
    assert reader.get_many([key]) == {key: ["v2", key]}
    assert write(reader, lambda: writer.delete(key)) is True
    assert reader.get(key, ABSENT) == ABSENT
    assert writer.get(key, ABSENT) == ABSENT
    assert raw.exists(l2_name(writer, key)) == 0
    assert write(reader, lambda: writer.delete(key)) is False
    # get_or_compute under this key (its fleet lock is named after it too).
    assert reader.get_or_compute(key, lambda: ["c", key]) == ["c", key]
    assert writer.get_or_compute(key, lambda: ["other", key]) == ["c", key]
    assert write(reader, lambda: writer.delete(key)) is True
    assert list(raw.scan_iter(match=f"redlock:{writer.config.namespace}:*")) == []


# -- invalid keys --------------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[FleetCache, Any, Callable[[], Any]], Any]] = {
    "get": lambda c, k, f: c.get(k),
    "get_default": lambda c, k, f: c.get(k, "default"),
    "get_many": lambda c, k, f: c.get_many(["fine", k]),
    "set": lambda c, k, f: c.set(k, "v"),
    "add": lambda c, k, f: c.add(k, "v"),
    "delete": lambda c, k, f: c.delete(k),
    "get_or_compute": lambda c, k, f: c.get_or_compute(k, f),
}


@FAST_PROPERTY
@given(key=bad_keys, op=st.sampled_from(sorted(OPERATIONS)))
@example(key=1, op="get")
@example(key=b"k", op="set")
@example(key=None, op="delete")
@example(key=("k",), op="get_or_compute")
@example(key="", op="get")
@example(key="k" * (MAX_KEY + 1), op="get_or_compute")
@example(key="\U0001f600" * (MAX_KEY + 1), op="set")
def test_invalid_keys_raise_before_any_redis_call(
    nowhere: FleetCache, key: Any, op: str
) -> None:
    threads = listener_threads()
    computed: list[bool] = []
    with pytest.raises(InvalidKeyError):
        OPERATIONS[op](nowhere, key, lambda: computed.append(True))
    assert not computed, "compute ran for an invalid key"
    stats = nowhere.stats()
    assert stats.redis_errors == 0 and stats.misses == 0 and stats.computes == 0, stats
    assert listener_threads() == threads, "the call started the cache's listener (connected)"


# -- glob metacharacters ----------------------------------------------------------------------

GLOBBY = ["*", "?", "[ab]", "[!a]", "a", "b", "ab", "\\*", "\\", "[", "]", "x", "", "**"]


@pytest.mark.slow
@PROPERTY
@given(base=st.text(alphabet="ab*?[]\\:", max_size=6))
@example(base="")
@example(base="a*")
def test_keys_differing_only_by_glob_metacharacters_do_not_collide(
    pair: tuple[FleetCache, FleetCache], raw: redis.Redis, base: str
) -> None:
    writer, reader = pair
    keys = sorted({base + suffix for suffix in GLOBBY} - {""})
    before = notices(reader)
    for i, key in enumerate(keys):
        writer.set(key, i)
    told(reader, before, len(keys))
    for i, key in enumerate(keys):
        assert reader.get(key) == i, f"{key!r} reads another key's value"
    # Dropping the "*" key (or any one) drops exactly that one.
    victim = keys[len(keys) // 2]
    assert write(reader, lambda: writer.delete(victim)) is True
    for i, key in enumerate(keys):
        assert reader.get(key, ABSENT) == (ABSENT if key == victim else i), key
    # clear() scans with a pattern: it must delete exactly this namespace's values.
    assert write(reader, writer.clear) == len(keys) - 1
    for key in keys:
        assert reader.get(key, ABSENT) == ABSENT, key
    assert namespace_data_keys(raw, writer.config.namespace, f"{writer.config.namespace}:*") == []


# -- @cached keys -------------------------------------------------------------------------------

def _canonical(value: Any) -> Any:
    """A value's identity for keying: type-tagged, dicts by sorted items, floats by bits."""
    if isinstance(value, dict):
        return ("dict", sorted((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_canonical(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def _rebuilt(value: Any) -> Any:
    """An equal copy built anew (same insertion order: only the objects are new)."""
    if isinstance(value, dict):
        return {k: _rebuilt(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuilt(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuilt(v) for v in value)
    if isinstance(value, str):
        return "".join(value)  # a new str object where CPython allows
    if isinstance(value, bytes):
        return bytes(bytearray(value))
    return value


def _reordered(value: Any) -> Any:
    """An equal copy whose dicts were filled in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_reordered(v) for v in value)
    return value


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[FleetCache]:
    """Another cache (another worker), in another namespace, also never connected."""
    cache = FleetCache.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="elsewhere")
    yield cache
    cache.close()


@pytest.fixture(scope="module")
def decorated(nowhere: FleetCache) -> Callable[..., Any]:
    """A @cached function (keys only: nothing here calls it, so nothing connects)."""

    @nowhere.cached(ttl=60)
    def report(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("never called")

    return report


@FAST_PROPERTY
@given(call=call_args)
def test_cached_key_is_stable_for_equal_args(
    elsewhere: FleetCache, decorated: Any, call: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    args, kwargs = call
    key = decorated.key(*args, **kwargs)
    assert key.startswith(f"fn:{__name__}.")
    assert len(key) <= 1024
    # The same call again, with new but equal objects, and kwargs given in another order.
    assert decorated.key(*_rebuilt(args), **_rebuilt(kwargs)) == key
    assert decorated.key(*args, **dict(reversed(list(kwargs.items())))) == key
    # Another cache (another worker) with the same function name agrees.
    @elsewhere.cached(key_prefix=key.rsplit(":", 1)[0])
    def same(*a: Any, **kw: Any) -> Any:
        raise AssertionError("never called")

    assert same.key(*args, **kwargs) == key


@FAST_PROPERTY
@given(call=call_args)
@example(call=(({"a": 1, "b": 2},), {}))
def test_cached_key_ignores_dict_insertion_order(
    decorated: Any, call: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    """``f({"a": 1, "b": 2})`` and ``f({"b": 2, "a": 1})`` are one call (the dicts are
    equal): one cache entry, and ``f.invalidate`` with either spelling drops it."""
    args, kwargs = call
    assert decorated.key(*_reordered(args), **_reordered(kwargs)) == decorated.key(
        *args, **kwargs)


@FAST_PROPERTY
@given(one=call_args, two=call_args)
def test_cached_keys_differ_for_different_args(
    decorated: Any, one: tuple[tuple[Any, ...], dict[str, Any]],
    two: tuple[tuple[Any, ...], dict[str, Any]],
) -> None:
    same_call = ([_canonical(a) for a in one[0]],
                 sorted((k, _canonical(v)) for k, v in one[1].items())) == (
                [_canonical(a) for a in two[0]],
                sorted((k, _canonical(v)) for k, v in two[1].items()))
    key_one, key_two = decorated.key(*one[0], **one[1]), decorated.key(*two[0], **two[1])
    if not same_call:
        assert key_one != key_two, f"{one!r} and {two!r} share the key {key_one}"


def test_cached_keys_differ_for_near_identical_args(decorated: Any) -> None:
    """Values Python calls equal, or that print alike, are still different calls."""
    spellings = [1, True, 1.0, "1", b"1", [1], {"1": 1}, None, 0, False, 0.0, -0.0, "",
                 b"", [], {}, [[]], [None], 2**63 - 1, -(2**63), "a", "A", "a ", "\x00"]
    keys = [decorated.key(s) for s in spellings]
    assert len(set(keys)) == len(spellings), [
        (a, b) for i, a in enumerate(spellings) for b in spellings[i + 1:]
        if decorated.key(a) == decorated.key(b)]
    assert decorated.key(1, 2) != decorated.key(2, 1)
    assert decorated.key(1, 2) != decorated.key([1, 2])
    assert decorated.key(1) != decorated.key(1, None)
    assert decorated.key("a", "b") != decorated.key("ab")


# -- the same keys in another process -----------------------------------------------------------

_CHILD = """
import json, sys
from fleetcache import FleetCache
cache = FleetCache.from_url(sys.argv[1], namespace="child")  # never connected

@cache.cached(key_prefix="report")
def report(*args, **kwargs):
    raise AssertionError("never called")

calls = json.loads(sys.stdin.read())
out = {name: report.key(*args, **kwargs) for name, (args, kwargs) in calls["plain"].items()}
words = calls["words"]
out["set"] = report.key(set(words))
out["frozenset"] = report.key(frozenset(words), tag="x")
print(json.dumps(out))
"""

PLAIN_CALLS = {
    "ints": [[1, 2, 3], {}],
    "kwargs": [[], {"b": 2, "a": [1, "x"], "c": None}],
    "nested": [[{"user": "alice", "tags": ["a", "b"], "n": 1.5}], {"page": 2}],
    "text": [["ключ", "*?[", "line\nbreak"], {}],
}
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@pytest.fixture(scope="module")
def child_keys() -> list[dict[str, str]]:
    """The keys of the same calls computed by fresh interpreters with different hash seeds
    (``hash()`` of a str differs between them, as between workers on two hosts)."""
    found = []
    for seed in ("1", "2", "3"):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, f"redis://127.0.0.1:{free_port()}/0"], cwd=REPO,
            capture_output=True, text=True, check=False, timeout=60,
            input=json.dumps({"plain": PLAIN_CALLS, "words": WORDS}),
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": seed},
        )
        assert proc.returncode == 0, proc.stderr
        found.append(json.loads(proc.stdout))
    return found


@pytest.mark.slow
def test_cached_keys_are_the_same_in_another_process(
    nowhere: FleetCache, child_keys: list[dict[str, str]]
) -> None:
    @nowhere.cached(key_prefix="report")
    def report(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("never called")

    mine = {name: report.key(*args, **kwargs) for name, (args, kwargs) in PLAIN_CALLS.items()}
    for theirs in child_keys:
        assert {name: theirs[name] for name in PLAIN_CALLS} == mine


@pytest.mark.slow
def test_cached_key_of_a_set_argument_is_the_same_in_another_process(
    child_keys: list[dict[str, str]]
) -> None:
    """``f({"alpha", "beta"})`` is one call in every worker, whatever its hash seed (a set
    of str iterates in ``hash()`` order, which is salted per interpreter)."""
    for name in ("set", "frozenset"):
        keys = {theirs[name] for theirs in child_keys}
        assert len(keys) == 1, (
            f"the key of one {name} argument differs between processes with different "
            f"hash seeds: {sorted(keys)}")
