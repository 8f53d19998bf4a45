"""The five writes: each sends its change and its invalidation notice in one script.

Every key and value is checked and encoded before anything is written. A write that could
not reach Redis raises (the fleet could not be told) and drops the writer's own L1 entry,
since its outcome is unknown. See README "Consistency and outages".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import BackendError
from .strategy import CacheStrategy
from .tiers import Tiers


class Writes:
    """``set``, ``add``, ``set_many``, ``delete``, ``delete_many`` and ``clear``."""

    __slots__ = ("_tiers",)

    def __init__(self, tiers: Tiers) -> None:
        self._tiers = tiers

    def _prepare(
        self, key: str, value: Any, ttl: float | None, strategy: CacheStrategy | None
    ) -> tuple[float, bytes]:
        """Validate and encode before anything is written: ``(ttl seconds, blob)``."""
        tiers = self._tiers
        tiers.check_key(key)
        seconds = tiers.ttl(ttl, strategy)
        return seconds, tiers.encode(key, value, seconds)

    def set(self, key: str, value: Any, ttl: float | None,
            strategy: CacheStrategy | None) -> None:
        tiers = self._tiers
        seconds, blob = self._prepare(key, value, ttl, strategy)
        proc = tiers.process()
        l1 = tiers.l1
        with proc.writes.hold(key):
            seq = l1.seq
            try:
                proc.l2.set_and_publish(key, blob, int(seconds * 1000), proc.bus.message(key))
            except BackendError:
                l1.invalidate(key)  # unknown outcome: never keep the old value locally
                raise
            tiers.counters.invalidations_sent += 1
            # A newer write from elsewhere may have landed (and its notice been applied)
            # between our SET and its reply: then ours is not the current value.
            l1.put(key, value, min(seconds, tiers.l1_ttl()), seq)

    def add(self, key: str, value: Any, ttl: float | None,
            strategy: CacheStrategy | None) -> bool:
        tiers = self._tiers
        seconds, blob = self._prepare(key, value, ttl, strategy)
        proc = tiers.process()
        with proc.writes.hold(key):
            seq = tiers.l1.seq
            # A "filled" notice: where L2 held nothing, no L1 can hold a replaced value.
            stored = proc.l2.set_and_publish(
                key, blob, int(seconds * 1000), proc.bus.message(key, filled=True),
                only_if_absent=True,
            )
            if stored:
                tiers.l1.store_if_unchanged(key, value, min(seconds, tiers.l1_ttl()), seq)
        return stored

    def set_many(self, mapping: Mapping[str, Any], ttl: float | None,
                 strategy: CacheStrategy | None) -> None:
        tiers = self._tiers
        seconds = tiers.ttl(ttl, strategy)
        items = list(mapping.items())
        blobs = []
        for key, value in items:
            tiers.check_key(key)
            blobs.append((key, tiers.encode(key, value, seconds)))
        if not items:
            return
        proc = tiers.process()
        seq = tiers.l1.seq
        keys = [key for key, _ in items]
        try:
            proc.l2.set_many_and_publish(blobs, int(seconds * 1000), proc.bus.message(keys))
        except BackendError:
            for key in keys:
                tiers.l1.invalidate(key)  # unknown outcome: never keep old values locally
            raise
        tiers.counters.invalidations_sent += len(items)
        tiers.l1.put_many(items, min(seconds, tiers.l1_ttl()), seq)

    def delete(self, key: str) -> bool:
        tiers = self._tiers
        tiers.check_key(key)
        proc = tiers.process()
        with proc.writes.hold(key):
            try:
                existed = proc.l2.delete_and_publish([key], proc.bus.message(key)) > 0
            finally:
                # After the DEL, not before: a read of ours that raced the DEL may have
                # promoted the old value; this drops it and voids any still in flight.
                tiers.l1.invalidate(key)
            tiers.counters.invalidations_sent += 1
        return existed

    def delete_many(self, keys: Sequence[str]) -> int:
        tiers = self._tiers
        keys = list(keys)
        for key in keys:
            tiers.check_key(key)
        if not keys:
            return 0
        proc = tiers.process()
        try:
            existed = proc.l2.delete_and_publish(keys, proc.bus.message(keys))
        finally:
            for key in keys:  # after the DEL, as in delete()
                tiers.l1.invalidate(key)
        tiers.counters.invalidations_sent += len(keys)
        return existed

    def clear(self) -> int:
        tiers = self._tiers
        proc = tiers.process()
        try:
            deleted = proc.l2.clear_and_publish(proc.bus.message(None))
        finally:
            tiers.l1.clear()  # after the deletes, for the same reason as in delete()
        tiers.counters.invalidations_sent += 1
        return deleted
