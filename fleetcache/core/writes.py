"""The writes: each sends its change and its invalidation notice in one script (a tag's or
a prefix's deletes go in batches, between two notices).

Every key and value is checked and encoded before anything is written. A write that could
not reach Redis raises (the fleet could not be told) and drops the writer's own L1 entry,
since its outcome is unknown. See README "Consistency and outages".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .codec import NO_TAGS
from .errors import BackendError, CorruptValueError, InvalidArgumentError
from .strategy import CacheStrategy
from .tiers import Tiers

_INCR_ATTEMPTS = 32  # compare-and-set rounds lost to concurrent writers before giving up


class Writes:
    """``set``, ``add``, ``set_many``, ``incr``, ``delete``, ``delete_many``, ``clear``,
    ``invalidate_tag`` and ``delete_prefix``."""

    __slots__ = ("_tiers",)

    def __init__(self, tiers: Tiers) -> None:
        self._tiers = tiers

    def _prepare(
        self, key: str, value: Any, ttl: float | None, strategy: CacheStrategy | None,
        tags: tuple[str, ...] = NO_TAGS,
    ) -> tuple[float, bytes, Any]:
        """Validate and encode before anything is written: ``(ttl seconds, blob, value as
        every reader will decode it)``."""
        tiers = self._tiers
        tiers.check_key(key)
        seconds = tiers.ttl(ttl, strategy)
        return (seconds, *tiers.encode(key, value, seconds, tags))

    def set(self, key: str, value: Any, ttl: float | None,
            strategy: CacheStrategy | None, tags: Iterable[str] | None = None) -> None:
        tiers = self._tiers
        tag_list = tiers.check_tags(tags)
        seconds, blob, value = self._prepare(key, value, ttl, strategy, tag_list)
        proc = tiers.process()
        l1 = tiers.l1
        with proc.writes.hold(key):
            seq = l1.seq
            try:
                _, version = proc.l2.set_and_publish(
                    key, blob, int(seconds * 1000), proc.bus.message(key), tags=tag_list,
                    published=tiers.notice(key, blob))
            except BackendError:
                l1.invalidate(key)  # unknown outcome: never keep the old value locally
                raise
            tiers.counters.invalidations_sent += 1
            # A newer write from elsewhere may have landed (and its notice been applied)
            # between our SET and its reply: then ours is not the current value.
            l1.put(key, value, min(seconds, tiers.l1_ttl()), seq, tags=tag_list,
                   version=version)

    def add(self, key: str, value: Any, ttl: float | None,
            strategy: CacheStrategy | None) -> bool:
        tiers = self._tiers
        seconds, blob, value = self._prepare(key, value, ttl, strategy)
        proc = tiers.process()
        with proc.writes.hold(key):
            seq = tiers.l1.seq
            # A full notice even where L2 held nothing: another L1 may still hold a value
            # that vanished from L2 without one (FLUSHDB, eviction).
            stored, version = proc.l2.set_and_publish(
                key, blob, int(seconds * 1000), proc.bus.message(key), only_if_absent=True,
                published=tiers.notice(key, blob),
            )
            if stored:
                tiers.l1.store_if_unchanged(key, value, min(seconds, tiers.l1_ttl()), seq,
                                            version=version)
        return stored

    def set_many(self, mapping: Mapping[str, Any], ttl: float | None,
                 strategy: CacheStrategy | None, tags: Iterable[str] | None = None) -> None:
        tiers = self._tiers
        tag_list = tiers.check_tags(tags)
        requested = tiers.requested_ttl(ttl, strategy)
        blobs: list[tuple[str, bytes, int]] = []
        items: list[tuple[str, Any]] = []  # as every reader will decode them
        seconds = requested
        for key, value in mapping.items():
            tiers.check_key(key)
            own = tiers.jitter(requested)  # its own TTL: keys written together expire apart
            seconds = min(seconds, own)
            blob, decoded = tiers.encode(key, value, own, tag_list)
            blobs.append((key, blob, int(own * 1000)))
            items.append((key, decoded))
        if not items:
            return
        proc = tiers.process()
        seq = tiers.l1.seq
        keys = [key for key, _ in items]
        try:
            # One notice for all, an invalidation whatever the sync_strategy.
            version = proc.l2.set_many_and_publish(blobs, proc.bus.message(keys), tag_list)
        except BackendError:
            for key in keys:
                tiers.l1.invalidate(key)  # unknown outcome: never keep old values locally
            raise
        tiers.counters.invalidations_sent += len(items)
        tiers.l1.put_many(items, min(seconds, tiers.l1_ttl()), seq, tag_list, version)

    def incr(self, key: str, delta: int, ttl: float | None,
             strategy: CacheStrategy | None) -> int:
        """Add ``delta`` to the int under ``key`` (absent: 0), atomically fleet-wide.

        Compare-and-set in L2: read the bytes, write the new value only if they are still
        the same, else read again. Works on signed values too (Redis cannot update an
        HMAC'd envelope itself). The read raises on Redis trouble like a write: a counter
        that read a timeout as "absent" would restart at ``delta``.
        """
        if type(delta) is not int:
            raise InvalidArgumentError(f"delta must be an int, got {type(delta).__name__}")
        tiers = self._tiers
        tiers.check_key(key)
        explicit = None if ttl is None and strategy is None else tiers.ttl(ttl, strategy)
        proc = tiers.process()
        l1 = tiers.l1
        with proc.writes.hold(key):
            for _ in range(_INCR_ATTEMPTS):
                blob = proc.l2.get(key)
                current, seconds = self._counter(key, blob, explicit)
                new_blob, new = tiers.encode(key, current + delta, seconds)
                seq = l1.seq
                try:
                    done, version = proc.l2.check_and_set(
                        key, blob, new_blob, int(seconds * 1000), proc.bus.message(key),
                        published=tiers.notice(key, new_blob))
                except BackendError:
                    l1.invalidate(key)  # unknown outcome
                    raise
                if done:
                    tiers.counters.invalidations_sent += 1
                    l1.put(key, new, min(seconds, tiers.l1_ttl()), seq, version=version)
                    return new  # type: ignore[no-any-return]
        raise BackendError(f"incr of {key!r}: {_INCR_ATTEMPTS} concurrent writes of the key "
                           f"came first in a row; try again")

    def _counter(self, key: str, blob: bytes | None, ttl: float | None) -> tuple[int, float]:
        """(the int ``blob`` holds, 0 if none; the TTL to write: ``ttl``, else the entry's
        own remaining life, else ``default_ttl``)."""
        tiers = self._tiers
        default = tiers.jitter(tiers.config.default_ttl) if ttl is None else ttl
        if blob is None:
            return 0, default
        try:
            current, expires_at_ms, _ = tiers.codec.decode(blob, key)
        except CorruptValueError as exc:
            raise InvalidArgumentError(
                f"cannot increment {key!r}: it holds bytes that are not a fleetcache value "
                f"({exc})") from exc
        if type(current) is not int:
            raise InvalidArgumentError(
                f"cannot increment {key!r}: it holds a {type(current).__name__}, not an int")
        left = expires_at_ms / 1000.0 - tiers.clock.time()
        if ttl is None and left >= 0.001:
            return current, left
        return current, default

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

    def delete_many(self, keys: Iterable[str]) -> int:
        tiers = self._tiers
        keys = tiers.key_list(keys)
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

    def invalidate_tag(self, tag: str) -> int:
        return self._delete_group("tag", tag)

    def delete_prefix(self, prefix: str) -> int:
        return self._delete_group("prefix", prefix)

    def _delete_group(self, kind: Literal["tag", "prefix"], name: str) -> int:
        """Every value carrying tag ``name``, or every key starting with it: L2's batches
        between two notices, then our own L1 (after the deletes, as in :meth:`delete`)."""
        tiers = self._tiers
        tiers.check_name(kind, name)
        proc = tiers.process()
        try:
            if kind == "tag":
                deleted = proc.l2.invalidate_tag(name, proc.bus.message({"t": name}))
            else:
                deleted = proc.l2.delete_prefix(name, proc.bus.message({"p": name}))
        finally:
            if kind == "tag":
                tiers.invalidate_tag(name)
            else:
                tiers.invalidate_prefix(name)
        tiers.counters.invalidations_sent += 1
        return deleted

    def clear(self) -> int:
        tiers = self._tiers
        proc = tiers.process()
        try:
            deleted = proc.l2.clear_and_publish(proc.bus.message(None))
        finally:
            tiers.l1.clear()  # after the deletes, for the same reason as in delete()
        tiers.counters.invalidations_sent += 1
        return deleted
