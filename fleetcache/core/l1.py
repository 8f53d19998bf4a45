"""The per-process L1: a bounded TTL dict whose read path is one lookup and one clock read.

Readers take no lock: ``dict.get`` is atomic under the GIL and readers never mutate. Every
mutation (store, invalidate, flush) happens under one lock and bumps ``seq``, the counter
that makes promotion race-free: a reader notes ``seq`` before its L2 GET and stores the
result only if *that key* was not written or invalidated, and L1 not flushed, since
(:meth:`store_if_unchanged`). Without it, a read of the old L2 value that lands after the
invalidation for that key would sit in L1 for the whole L1 TTL. Each key's last move is
remembered (``_touched``) so that an invalidation of one key does not void promotions of
the others (a global check refused 15-36% of a busy worker's promotions); past
``_TOUCHED_LIMIT`` keys the memory is dropped and counts as a flush for in-flight reads. A
false "moved" only costs one extra L2 read later.

``fresh_until`` is the listener's lease on L1 (on the cache's monotonic clock): hits are
served only before it. The invalidation listener pushes it forward each time it has drained
its socket, so a listener starved of CPU stops L1 from serving values it may not have heard
were replaced. While the bus is down it is infinite: entries then live ``degraded_l1_ttl``
instead.

A gap on the bus *suspends* L1 (:meth:`LocalStore.suspend`): every entry held at that
moment reads as expired, none is dropped, and entries stored during the gap (read from L2
after it began) are served as usual. When the listener has replayed the notices it missed,
:meth:`LocalStore.resume` gives the held entries their times back, except those the replay
invalidated or a newer write replaced; where it cannot replay, :meth:`LocalStore.clear`
drops them. So a reconnect costs a worker the keys that changed, not its whole L1.

Which keys stay is decided by frequency, not by order (``benchmarks/hit_ratio.py`` measured
FIFO, LRU, SIEVE, S3-FIFO, ARC, LIRS and W-TinyLFU on the same traces before this was
chosen). A hit adds one to its entry's counter: one integer store, no lock, no reorder. A
key that is not in L1 is counted in a :class:`~.sketch.FrequencySketch` each time a read
misses it and would promote it. When L1 is full, the weakest of the ``SAMPLE`` oldest
entries (lowest count; an expired one first) is the eviction candidate,
and the newcomer takes its place only if it was asked for more often (TinyLFU admission):
a burst of one-off keys, such as a sweep, cannot push the hot set out. The sampled entries
that survive go to the back, so the next eviction looks at others (a CLOCK hand). Every
``10 x capacity`` counted misses, all counts are halved, so a key that stops being read
loses its place. An entry that leaves (evicted, invalidated, flushed) hands its count back
to the sketch, so a hot key invalidated by a write is admitted again at once. A batch
promotion (``get_many``) counts its misses in one pass and lets its strongest newcomers in
first; once one loses its contest, the weaker rest are refused without sampling (100 cold
keys into a full L1: one contest, not 100).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from itertools import islice
from operator import itemgetter
from typing import Any, Final

from .clock import SYSTEM_CLOCK, Clock
from .sketch import FrequencySketch
from .stats import Counters

# [value, expires_at, count, usable_until] (times on the monotonic clock): a list, so a hit
# can count itself in place. ``count`` is how often the key was asked for: its sketch
# estimate when it was let in, plus one per hit since; eviction compares it without touching
# the sketch. ``usable_until`` is past ``expires_at`` for a value with a stale window
# (``get_or_compute(stale_ttl=...)``): after ``expires_at`` only :meth:`LocalStore.stale`
# serves it. ``expires_at`` is -inf for an entry kept through a bus gap for fail-safe only
# (:meth:`LocalStore.clear`) or held back until a replay (:meth:`LocalStore.suspend`).
# Readers index the list (VALUE, EXPIRES, COUNT, USABLE) and never replace it.
Entry = list[Any]
VALUE: Final = 0
EXPIRES: Final = 1
COUNT: Final = 2
USABLE: Final = 3

SAMPLE: Final = 3  # entries compared per eviction (on the zipf traces, 5 or 8 kept no more
# hits and 1 kept fewer)
AGE_EVERY: Final = 10  # halve every count after this many counted misses per slot

_TOUCHED_LIMIT = 4096  # keys whose last move is remembered; beyond that, a promotion floor


class LocalStore:
    """Bounded TTL store. ``data`` is read directly by the cache's hit path."""

    __slots__ = ("_age_at", "_counted", "_counters", "_floor", "_gone_hits", "_key_tags",
                 "_lock", "_now", "_sketch", "_suspended", "_tagged", "_touched", "_versions",
                 "capacity", "data", "fresh_until", "negative", "seq")

    def __init__(self, capacity: int, clock: Clock = SYSTEM_CLOCK,
                 counters: Counters | None = None, *, versioned: bool = False) -> None:
        self.capacity = capacity
        self._now = clock.monotonic
        self._counters = counters if counters is not None else Counters()
        # OrderedDict: the eviction hand reads the front and sends survivors to the back in
        # O(1) (move_to_end); on a plain dict, deleting at the front leaves dead slots that
        # every later scan of the front must skip. Lookups cost the same as on a dict.
        self.data: OrderedDict[str, Entry] = OrderedDict()
        # Cached NOT_FOUND answers (negative caching): key -> expires_at. Apart from
        # ``data``, so the hit path never meets the sentinel; oldest dropped at capacity.
        self.negative: OrderedDict[str, float] = OrderedDict()
        self._sketch = FrequencySketch(capacity)
        self._counted = 0  # misses counted since the last halving
        self._gone_hits = 0  # hits counted outside the live entries' counts (see hits())
        self._age_at = max(1, capacity) * AGE_EVERY
        self.seq = 0
        self.fresh_until = math.inf
        self._touched: dict[str, int] = {}  # key -> seq of its last write or invalidation
        self._floor = 0  # reads noted before this seq may not promote (flush, or pruning)
        self._suspended: _Suspension | None = None
        # Tags of the entries (values and NOT_FOUND answers) that have any, both ways: an
        # invalidate_tag notice finds its keys at once. Empty, and never looked at on any
        # path, for a cache that uses no tags.
        self._key_tags: dict[str, tuple[str, ...]] = {}
        self._tagged: dict[str, set[str]] = {}
        # With sync_strategy="update": the version (the write's replay-log id) of each
        # entry whose version is known, so an update notice replaces only an older value
        # (:meth:`update`). None otherwise: nothing to keep or look at.
        self._versions: dict[str, int] | None = {} if versioned else None
        # Looked up at call time, so a store made after gevent's monkey-patching gets a
        # greenlet-aware lock (a native lock would block the hub).
        self._lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        """The live entry for ``key`` (its hit counted), or None (expired entries are left
        for the eviction hand)."""
        entry = self.data.get(key)
        if entry is not None and entry[EXPIRES] > self._now() < self.fresh_until:
            entry[COUNT] += 1
            return entry
        return None

    def put(self, key: str, value: Any, ttl: float, seq: int, stale_for: float = 0.0, *,
            tags: tuple[str, ...] = (), version: int = 0) -> bool:
        """Store this process's own write, sent at ``seq``; False if ``key`` moved since
        (then it is dropped instead). Voids concurrent promotions of ``key`` either way.
        ``stale_for``: seconds past ``ttl`` that :meth:`stale` may still serve it; ``tags``:
        the value's (see :meth:`invalidate_tag`); ``version``: the write's (0: unknown)."""
        with self._lock:
            moved = self.moved_since(key, seq)
            self._touch(key)
            if moved:
                self._drop(key)
                return False
            expires_at = self._now() + ttl
            return self._insert(key, value, expires_at, expires_at + stale_for, tags,
                                version=version)

    def put_many(self, items: list[tuple[str, Any]], ttl: float, seq: int,
                 tags: tuple[str, ...] = (), version: int = 0) -> int:
        """:meth:`put` for several keys under one lock; how many were stored."""
        with self._lock:
            expires_at = self._now() + ttl
            stored = 0
            for key, value in items:
                moved = self.moved_since(key, seq)
                self._touch(key)
                if moved:
                    self._drop(key)
                elif self._insert(key, value, expires_at, expires_at, tags, version=version):
                    stored += 1
            return stored

    def store_if_unchanged(self, key: str, value: Any, ttl: float, seq: int,
                           stale_for: float = 0.0, *, tags: tuple[str, ...] = (),
                           version: int = 0) -> bool:
        """Promote an L2 read taken at ``seq``; False if ``key`` moved (or L1 was flushed)
        since, or L1 kept its current entries instead (see the module doc). ``ttl`` may be
        negative for a value already stale: then only :meth:`stale` serves it. ``version``:
        what the read is at least as new as (0: unknown)."""
        with self._lock:
            if self.moved_since(key, seq):
                return False
            expires_at = self._now() + ttl
            return self._insert(key, value, expires_at, expires_at + stale_for, tags,
                                version=version)

    def store_many_if_unchanged(
        self, items: list[tuple[str, Any, float, tuple[str, ...]]], seq: int,
        version: int = 0,
    ) -> int:
        """Promote ``(key, value, ttl, tags)`` reads taken at ``seq`` (all at least as new
        as ``version``) under one lock and one clock read; how many were stored (those
        whose key did not move since and that won a place, see :meth:`_admit`)."""
        with self._lock:
            now = self._now()
            data = self.data
            items = [item for item in items if not self.moved_since(item[0], seq)]
            wanted = self._admit([item[0] for item in items if item[0] not in data])
            stored = 0
            for key, value, ttl, tags in items:
                if key in data or key in wanted:
                    self._place(key, value, now + ttl, now + ttl, tags=tags,
                                version=version, wanted=wanted.pop(key, 0))
                    stored += 1
            return stored

    def update(self, key: str, value: Any, ttl: float, version: int,
               tags: tuple[str, ...] = ()) -> bool:
        """Another process wrote ``value`` at ``version`` (``sync_strategy="update"``):
        replace our entry if it is older; True if replaced.

        Only an entry whose version is known and older is replaced. One that is as new or
        newer (our own racing write, or a read that saw a later write) is kept; one of
        unknown version, or none at all, is treated as an invalidation: an entry is never
        replaced by an older value, and a key this process does not hold is not added.
        """
        with self._lock:
            versions = self._versions
            held = 0 if versions is None else versions.get(key, 0)
            if held and version <= held and key in self.data:
                return False
            self._touch(key)  # either way, a read in flight may be older: void it
            if not held or key not in self.data:
                self._drop(key)
                self.negative.pop(key, None)
                return False
            expires_at = self._now() + ttl
            return self._insert(key, value, expires_at, expires_at, tags, version=version)

    def stale(self, key: str) -> Entry | None:
        """The entry for ``key`` if it is past its fresh time but within its stale window
        (and the listener's lease holds, as for a hit); None otherwise. Not counted as a
        hit: what serves it counts ``stale_served``."""
        entry = self.data.get(key)
        if entry is None or not entry[USABLE] > (now := self._now()) >= entry[EXPIRES]:
            return None
        if entry[EXPIRES] == -math.inf:  # kept through a gap: only while the bus is down
            return entry if self.fresh_until == math.inf else None
        return entry if now < self.fresh_until else None

    def put_negative(self, key: str, ttl: float, seq: int,
                     tags: tuple[str, ...] = ()) -> bool:
        """Remember that ``key`` has nothing (a cached ``NOT_FOUND`` read or computed at
        ``seq``, carrying ``tags``) for ``ttl`` seconds; False if ``key`` moved since."""
        with self._lock:
            if self.moved_since(key, seq):
                return False
            self._drop(key)
            negative = self.negative
            if negative.pop(key, None) is None and len(negative) >= self.capacity:
                if not negative:
                    return False  # capacity 0
                self._untag(negative.popitem(last=False)[0])
            negative[key] = self._now() + ttl
            if tags:
                self._tag(key, tags)
            return True

    def is_negative(self, key: str) -> bool:
        """Whether a live cached ``NOT_FOUND`` is held for ``key`` (the listener's lease
        holding, as for a hit)."""
        until = self.negative.get(key)
        return until is not None and until > self._now() < self.fresh_until

    def lease(self, until: float) -> None:
        """Serve hits only before ``until`` (the listener's lease; see the module doc)."""
        self.fresh_until = until

    def invalidate(self, key: str) -> bool:
        """Drop ``key``; True if it was present."""
        with self._lock:
            self._touch(key)
            return self._drop(key) | (self.negative.pop(key, None) is not None)

    def invalidate_tag(self, tag: str) -> list[str]:
        """Drop every entry carrying ``tag``; the keys dropped. Voids every promotion in
        flight (a read of a value with the tag may be one: its key is not known yet)."""
        with self._lock:
            keys = list(self._tagged.get(tag, ()))
            self._drop_all(keys)
            return keys

    def invalidate_prefix(self, prefix: str) -> list[str]:
        """Drop every entry whose key starts with ``prefix``; the keys dropped. O(entries);
        voids every promotion in flight, as :meth:`invalidate_tag` does."""
        with self._lock:
            keys = [k for k in self.data if k.startswith(prefix)]
            keys += [k for k in self.negative if k.startswith(prefix)]
            self._drop_all(keys)
            return keys

    def _drop_all(self, keys: list[str]) -> None:
        self.seq += 1
        self._floor = self.seq
        self._touched.clear()
        for key in keys:
            self._drop(key)
            self.negative.pop(key, None)

    def clear(self, gap: bool = False) -> None:
        """Drop everything (and void in-flight promotions). The sketch is kept: what was
        popular before a flush is popular after it.

        A ``gap`` (the bus went down or came back: notices may have been missed) keeps the
        entries that have a stale window, for fail-safe only: :meth:`stale` serves them
        while the bus is down (Redis unreachable), never once it is up again.
        """
        with self._lock:
            self.seq += 1
            self._floor = self.seq
            self._touched.clear()
            for key in self.negative:
                self._untag(key)
            self.negative.clear()
            if self._versions:
                self._versions.clear()  # what a gap keeps may be of another server's life
            self._suspended = None
            for key, entry in list(self.data.items()):
                if gap and entry[USABLE] > entry[EXPIRES]:
                    entry[EXPIRES] = -math.inf
                else:
                    self._drop(key)

    def suspend(self) -> None:
        """Stop serving every entry held now, dropping none: the bus lost its connection,
        so they may miss notices until it has replayed the log. :meth:`resume` serves them
        again, :meth:`clear` drops them. Entries stored meanwhile are served as usual (they
        are read after the gap began, and live ``degraded_l1_ttl``). An entry with a stale
        window stays servable by :meth:`stale` while the bus is down (fail-safe), as after
        ``clear(gap=True)``. O(entries), once per gap; the hit path is unchanged (a held
        entry's fresh time reads as -inf)."""
        with self._lock:
            if self._suspended is not None:
                return
            held: dict[str, tuple[Entry, float, float]] = {}
            for key, entry in self.data.items():
                expires, usable = entry[EXPIRES], entry[USABLE]
                held[key] = (entry, expires, usable)
                entry[EXPIRES] = -math.inf
                if usable <= expires:  # no stale window: not for stale() either
                    entry[USABLE] = -math.inf
            self._suspended = _Suspension(held, dict(self.negative), self.seq)
            self.negative.clear()

    def resume(self) -> None:
        """Serve again what :meth:`suspend` held back (every notice missed since has been
        applied: what was invalidated is gone, what was rewritten is a new entry)."""
        with self._lock:
            held, self._suspended = self._suspended, None
            if held is None:
                return
            data = self.data
            for key, (entry, expires, usable) in held.entries.items():
                if data.get(key) is entry and entry[EXPIRES] == -math.inf:
                    entry[EXPIRES] = expires
                    entry[USABLE] = usable
            negative = self.negative
            for key, until in held.negative.items():
                if (len(negative) < self.capacity and key not in data
                        and not self.moved_since(key, held.seq)):
                    negative.setdefault(key, until)
                elif key not in data and key not in negative:
                    self._untag(key)  # not brought back: its tags go with it

    @property
    def suspended(self) -> bool:
        """Whether entries are held back by :meth:`suspend`."""
        return self._suspended is not None

    def hits(self) -> int:
        """Every hit an entry has counted, including entries since gone.

        This is the ``l1_hits`` statistic: the hit path's one increment (``entry[COUNT]``)
        serves both the eviction policy and the statistic, so no second counter is paid
        for. ``_gone_hits`` keeps the sum right: it gives back what entries counted before
        they were let in, and keeps what left with them or was halved away. O(entries):
        for snapshots, not for the hot path.
        """
        with self._lock:
            return self._gone_hits + sum(int(entry[COUNT]) for entry in self.data.values())

    def __len__(self) -> int:
        return len(self.data)

    def moved_since(self, key: str, seq: int) -> bool:
        """Whether ``key`` was written or invalidated, or L1 flushed, after ``seq``: then a
        value read or computed from before may be older than what L1 was told of."""
        return self._floor > seq or self._touched.get(key, 0) > seq

    def _touch(self, key: str) -> None:
        self.seq += 1
        if len(self._touched) >= _TOUCHED_LIMIT:
            self._touched.clear()
            self._floor = self.seq  # forgotten moves: refuse every read noted before now
        self._touched[key] = self.seq

    def _tag(self, key: str, tags: tuple[str, ...]) -> None:
        self._key_tags[key] = tags
        tagged = self._tagged
        for tag in tags:
            keys = tagged.get(tag)
            if keys is None:
                tagged[tag] = {key}
            else:
                keys.add(key)

    def _untag(self, key: str) -> None:
        tags = self._key_tags.pop(key, None)
        if tags:
            tagged = self._tagged
            for tag in tags:
                keys = tagged.get(tag)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del tagged[tag]

    def _drop(self, key: str) -> bool:
        if self._key_tags:
            self._untag(key)
        if self._versions:
            self._versions.pop(key, None)
        entry = self.data.pop(key, None)
        if entry is None:
            return False
        count = entry[COUNT]
        self._gone_hits += count
        self._sketch.raise_to(key, count)  # its popularity outlives the entry
        return True

    def _insert(self, key: str, value: Any, expires_at: float, usable_until: float,
                tags: tuple[str, ...] = (), *, version: int = 0) -> bool:
        """Store ``key``, if it is resident or wins a place (see the module doc)."""
        wanted = 0
        if key not in self.data:
            wanted = self._count_miss(key)
            if len(self.data) >= self.capacity and not self._evict_for(wanted):
                self._counters.l1_rejections += 1
                return False
        self._place(key, value, expires_at, usable_until, tags=tags, version=version,
                    wanted=wanted)
        return True

    def _place(self, key: str, value: Any, expires_at: float, usable_until: float, *,
               tags: tuple[str, ...], version: int, wanted: int) -> None:
        """Write ``key``'s entry: in place if resident (it keeps its slot and its count),
        else at the back with the count it was ``wanted`` with (room already made)."""
        data = self.data
        if self.negative:
            self.negative.pop(key, None)  # a value now: no longer "nothing"
        if self._key_tags:
            self._untag(key)  # the new value's tags replace the old one's
        old = data.get(key)
        if old is not None:
            data[key] = [value, expires_at, old[COUNT], usable_until]
        else:
            data[key] = [value, expires_at, wanted, usable_until]
            self._gone_hits -= wanted  # asked for before it was let in: not hits
        if tags:
            self._tag(key, tags)
        versions = self._versions
        if versions is not None:
            if version:
                versions[key] = version
            else:
                versions.pop(key, None)

    def _admit(self, newcomers: list[str]) -> dict[str, int]:
        """Count a batch's misses and make room for the strongest: newcomer -> its count,
        for those let in.

        The strongest go first: into free slots, then each against the eviction hand as
        :meth:`_evict_for` decides, until one loses; the rest of the batch, weaker still,
        is refused without sampling (a ``get_many`` of 100 cold keys into a full L1 costs
        one contest, not 100)."""
        self._count_misses(len(newcomers))  # ages first, as a lone miss does
        counts = self._sketch.add_each(newcomers)
        # strongest first; among equals, the batch's order (sorted is stable, reversed too)
        order = sorted(zip(newcomers, counts, strict=True), key=itemgetter(1), reverse=True)
        room = max(0, self.capacity - len(self.data))
        admitted = dict(order[:room])
        for key, count in order[room:]:
            if not self._evict_for(count):
                self._counters.l1_rejections += len(order) - len(admitted)
                break
            admitted[key] = count
        return admitted

    def _count_miss(self, key: str) -> int:
        self._count_misses(1)
        return self._sketch.add(key)

    def _count_misses(self, n: int) -> None:
        """Note ``n`` counted misses; every ``AGE_EVERY x capacity`` of them, halve every
        count (the sketch's and the entries')."""
        self._counted += n
        if self._counted >= self._age_at:
            self._counted = 0
            self._sketch.halve()
            for entry in self.data.values():
                count = entry[COUNT]
                self._gone_hits += count - (count >> 1)
                entry[COUNT] = count >> 1

    def _evict_for(self, wanted: int) -> bool:
        """Evict the weakest sampled entry if a newcomer asked for ``wanted`` times beats
        it; False (nothing evicted) if L1 keeps what it has."""
        data = self.data
        sampled = list(islice(data, SAMPLE))  # the hand: the front of the queue
        if not sampled:
            return False  # capacity 0: L1 is off
        now = self._now()
        held = self._suspended.entries if self._suspended is not None else {}
        victim, weakest = sampled[0], math.inf
        for key in sampled:
            entry = data[key]
            if entry[USABLE] <= now and key not in held:
                victim, weakest = key, -1  # dead already: no contest
                break
            if entry[COUNT] < weakest:
                victim, weakest = key, entry[COUNT]
        for key in sampled:
            if key != victim:
                data.move_to_end(key)  # the hand passes the survivors
        if wanted <= weakest:
            data.move_to_end(victim)
            return False
        self._drop(victim)
        self._counters.l1_evictions += 1
        return True


class _Suspension:
    """What :meth:`LocalStore.suspend` held back: each entry with its fresh and usable
    times, the cached ``NOT_FOUND`` answers, and the ``seq`` it happened at."""

    __slots__ = ("entries", "negative", "seq")

    def __init__(self, entries: dict[str, tuple[Entry, float, float]],
                 negative: dict[str, float], seq: int) -> None:
        self.entries = entries
        self.negative = negative
        self.seq = seq
