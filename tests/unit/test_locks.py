"""KeyedLocks: one lock per key while in use, and a registry that does not grow."""

from __future__ import annotations

import threading
import time

from fleetcache.core.keyed_locks import KeyedLocks

from ..helpers import run_threads


def test_same_key_is_exclusive_and_other_keys_are_not() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap: list[bool] = []

    def hold(key: str) -> None:
        with locks.hold(key):
            inside.append(key)
            overlap.append(inside.count(key) > 1)
            time.sleep(0.02)
            inside.remove(key)

    run_threads([threading.Thread(target=hold, args=(k,)) for k in ("a", "a", "a", "b")], 5)
    assert not any(overlap)


def test_registry_forgets_keys_once_released() -> None:
    locks = KeyedLocks()
    for i in range(100):
        with locks.hold(f"k{i}"):
            assert len(locks) == 1
    assert len(locks) == 0


def test_registry_forgets_keys_after_an_exception() -> None:
    locks = KeyedLocks()
    try:
        with locks.hold("k"):
            raise RuntimeError("compute failed")
    except RuntimeError:
        pass
    assert len(locks) == 0
    with locks.hold("k"):  # and the key's lock is usable again
        pass
