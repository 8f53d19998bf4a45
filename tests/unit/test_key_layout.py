"""KeyLayout: every Redis name in one place; with hash tags, a namespace's names share a slot."""

from __future__ import annotations

import fnmatch

import pytest
from redis.crc import key_slot

from fleetcache import KeyLayout


def test_single_server_layout_is_the_one_existing_data_uses() -> None:
    keys = KeyLayout("shop")
    assert keys.value("user:1") == "shop:v:user:1"
    assert keys.lease("user:1") == "shop:f:user:1"
    assert keys.lock_name("user:1") == "shop:lock:user:1"
    assert keys.lock("user:1") == "redlock:shop:lock:user:1"  # pottery's key format
    assert keys.channel == "shop:inv"
    assert keys.stream("events") == "shop:s:events"


@pytest.mark.parametrize("key", ["user:1", "a}b", "{x}", "}{", "ü" * 30, "k" * 1024])
def test_hash_tags_put_every_name_of_the_namespace_in_one_slot(key: str) -> None:
    keys = KeyLayout("shop", hash_tags=True)
    names = [keys.value(key), keys.lock(key), keys.lease(key), keys.channel, keys.log,
             keys.epoch, keys.position, keys.tag(key), keys.stream(key), keys.workers,
             keys.workers_live, keys.workers_folded, keys.retired]
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"shop")}, names
    assert keys.value(key) == "{shop}:v:" + key
    assert keys.lock(key) == "redlock:{shop}:lock:" + key  # still pottery's format


def test_hash_tags_give_namespaces_their_own_slots() -> None:
    slots = {key_slot(KeyLayout(f"app{i}", hash_tags=True).channel.encode())
             for i in range(200)}
    assert len(slots) > 190  # a cluster spreads namespaces over its primaries


@pytest.mark.parametrize("namespace", ["a{b}", "a}", ""])
def test_a_namespace_that_could_break_the_tag_is_refused(namespace: str) -> None:
    with pytest.raises(ValueError, match="braces"):
        KeyLayout(namespace)


@pytest.mark.parametrize("hash_tags", [False, True])
@pytest.mark.parametrize("key", ["user:1:a", "}x{", "a*b[c]?", "\\", "é"])
def test_key_of_inverts_value_and_value_match_matches_it(hash_tags: bool, key: str) -> None:
    layout = KeyLayout("ns", hash_tags=hash_tags)
    assert layout.key_of(layout.value(key)) == key
    assert fnmatch.fnmatchcase(layout.value(key), _glob(layout.value_match(key[:2])))
    assert not fnmatch.fnmatchcase(layout.value("z" + key), _glob(layout.value_match(key[:2])))


def _glob(pattern: str) -> str:
    """A Redis MATCH pattern as an fnmatch one: ``\\x`` is the literal x."""
    out, escaped = [], False
    for c in pattern:
        if escaped:
            out.append("[" + c + "]" if c in "*?[" else c)
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            out.append(c)
    return "".join(out)


def test_tag_sets_live_under_the_namespace() -> None:
    assert KeyLayout("ns").tag("user:1") == "ns:t:user:1"
