"""The L2 store: the few commands the cache needs, each one round trip.

Bytes in, bytes out: encoding lives in :mod:`fleetcache.core.codec`, names in
:mod:`fleetcache.redis.keys`. Every redis-py error is mapped onto
:class:`~fleetcache.BackendError` (chained, :mod:`fleetcache.redis.errors`), so the front
decides per operation whether to degrade (reads) or raise (writes).

Every write is one Lua script that also publishes its notice: one round trip, atomic (never
a new value without its notice), and one reply to parse. A MULTI/EXEC doing the same costs
redis-py twice the CPU (five replies), which a CPU-bound worker pays on every write and miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.crc import key_slot

from ..core.errors import BackendError, BackendUnavailableError
from ..core.protocols import FillLock, FillOutcome
from .errors import mapped_errors
from .keys import KeyLayout, glob_escape
from .lane import CommandLane
from .replay import version_of

_DISCARD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Fill leases (memcache's, Nishtala et al., NSDI 2013). A fill, the compute of a value L2
# did not hold, adds its token to the key's lease set when it takes the fill lock. Every
# write of the key (set, add, set_many, delete, delete_many, clear) deletes the lease set,
# and a fill stores only if its token is still there: so a delete landing while the value
# is computed from the old database row is never undone by the fill. The set lives
# fill_timeout: a fill slower than that is not stored either (it cannot know what it missed).

# KEYS: value, lock, lease; ARGV: token, lock ms, lease ms. Reply {value or nil, won}.
# Atomic, so there is no window between "not cached" and "lock taken" for a holder to store
# and release in.
_FETCH_OR_LOCK = """
local value = redis.call('GET', KEYS[1])
if value then return {value, 0} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 0} end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {false, 1}
"""

# A refresh: the compute of a value L2 holds but that is past its fresh time (served stale
# meanwhile). KEYS: value, lock, lease; ARGV: the stale blob seen, token, lock ms, lease ms.
# Reply {1, 0} if the lock and a lease were taken; {0, ms} if the lock is held (another
# refresh, or a failed one's throttle) for ms more; {-1, 0} if the value is no longer those
# bytes (rewritten or deleted since: nothing to refresh, and nothing to resurrect).
_LOCK_STALE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, 0} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {0, redis.call('PTTL', KEYS[2])}
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return {1, 0}
"""

# Every notice goes out twice, from the one function below that each write script starts
# with: appended to the namespace's replay log (a stream, trimmed to ``log_length`` entries
# and ``log_age`` ms, both approximately: whole stream nodes), then PUBLISHed as
# ``<entry id>|<notice>``, so a listener knows the log position of every notice it applied
# and, after a gap, replays the rest from the log (fleetcache.redis.replay). A log length
# of 0 turns the log off: the id is empty, every gap flushes L1, and the log is deleted, so
# that processes keeping one do not trust a log without these notices.
#
# The entry id is also the write's *version*: stored under the namespace's position key
# (KeyLayout.position) and returned by the script, so a reader that MGETs a value with the
# position knows every write up to that id is in what it read, and a writer knows its own
# write's place in the order (sync_strategy="update": fleetcache.redis.bus). A notice may
# be published with more than what is logged (the new value, under "update"): the log keeps
# only the invalidation, and a replay invalidates.
#
# Its arguments are the last ones of each script: KEYS ends with the position key and the
# log; ARGV ends with channel, notice, the notice to publish ('' for the same), log length,
# log age ms. A script is not rolled back when a command in it fails (an ACL without the
# channel, say): each write script notifies first, so a failure leaves at worst a notice
# without a write (harmless: readers re-read L2), never a write without its notice.
# Readers cannot tell the order apart: nothing runs between a script's commands.
# __PUBLISH__ is PUBLISH, or on a Redis Cluster SPUBLISH on the namespace's shard channel
# (same slot as every key: fleetcache.redis.cluster), which reaches only that slot's shard.
_NOTIFY = """
local function notify()
  local n = #ARGV
  local id = ''
  local length = tonumber(ARGV[n - 1])
  if length > 0 then
    local log = KEYS[#KEYS]
    id = redis.call('XADD', log, 'MAXLEN', '~', length, '*', 'n', ARGV[n - 3])
    -- The new id starts with the server's time in ms (never TIME: an ACL user of the
    -- deploy guide may not run it).
    local oldest = tonumber(string.match(id, '^(%d+)')) - ARGV[n]
    if oldest > 0 then redis.call('XTRIM', log, 'MINID', '~', oldest) end
    redis.call('SET', KEYS[#KEYS - 1], id)
  else
    redis.call('DEL', KEYS[#KEYS])
  end
  local published = ARGV[n - 2]
  if published == '' then published = ARGV[n - 3] end
  redis.call('__PUBLISH__', ARGV[n - 4], id .. '|' .. published)
  return id
end
"""

# Tags: a write with tags adds its key to each tag's set (KeyLayout.tag), whose life is
# raised to the value's if shorter (a set without expiry keeps none). The tag sets' KEYS
# come after the script's own, before the position key and the log; the key itself is in
# ARGV (a set holds cache keys, not Redis names: invalidate_tag maps them back through the
# layout).
_TAG = """
local function tag(first, member, ms)
  for i = first, #KEYS - 2 do
    local left = redis.call('PTTL', KEYS[i])
    redis.call('SADD', KEYS[i], member)
    if left ~= -1 and left < tonumber(ms) then redis.call('PEXPIRE', KEYS[i], ms) end
  end
end
"""

# KEYS: value, lock, lease, tag sets, notify's two; ARGV: blob, ms, token, "refresh" or "",
# the key (if tagged), notify's five.
# Releases the lock (pottery's compare-and-delete) whatever happens; stores only under a
# live lease and, unless it is a refresh (which replaces the stale value its lease was
# taken on), only where L2 holds nothing (a set() during the compute is newer, and revoked
# the lease anyway). Reply {stored, released, leased, version}.
_STORE_FILL = _NOTIFY + _TAG + """
local released = 0
if redis.call('GET', KEYS[2]) == ARGV[3] then released = redis.call('DEL', KEYS[2]) end
if redis.call('SREM', KEYS[3], ARGV[3]) == 0 then return {0, released, 0} end
if ARGV[4] ~= 'refresh' and redis.call('EXISTS', KEYS[1]) == 1 then return {0, released, 1} end
local id = notify()
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
tag(4, ARGV[5], ARGV[2])
return {1, released, 1, id}
"""

# KEYS: lock, lease; ARGV: token, hold ms. A fill that stores nothing (its compute raised)
# gives up its lease and its lock (compare-and-delete), or, with hold ms > 0, keeps the lock
# that much longer: the fail-safe throttle, so no process of the fleet retries a failing
# compute before then. Reply: 1 if the lock was still ours.
_ABANDON_FILL = """
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""

# KEYS: value, lease, tag sets, notify's two; ARGV: blob, ms, "NX" or "", the key (if
# tagged), notify's five. Reply {1, version} if stored, {0, ''} if NX lost.
_SET_PUBLISH = _NOTIFY + _TAG + """
if ARGV[3] == 'NX' and redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
local id = notify()
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
tag(3, ARGV[4], ARGV[2])
return {1, id}
"""

# KEYS: value, lease, notify's two; ARGV: expected blob ('' for "absent": no envelope is
# empty), new blob, ms, notify's five. Reply {1, version} if L2 still held the expected
# bytes and now the new, else {0, ''}.
_CHECK_AND_SET = _NOTIFY + """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return {0, ''} end
local id = notify()
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return {1, id}
"""

# KEYS: n values, then their n leases, then tag sets, then notify's two; ARGV: n, a blob and
# its ms per key (each its own TTL: see ttl_jitter), the n keys if tagged, then notify's
# five (one notice for all). Reply: the version.
_SET_MANY_PUBLISH = _NOTIFY + _TAG + """
local n = tonumber(ARGV[1])
local id = notify()
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2 * i], 'PX', ARGV[2 * i + 1])
  redis.call('DEL', KEYS[n + i])
end
if #KEYS > 2 * n + 2 then
  local longest = 0
  for i = 1, n do longest = math.max(longest, tonumber(ARGV[2 * i + 1])) end
  for i = 1, n do tag(2 * n + 1, ARGV[2 * n + 1 + i], longest) end
end
return id
"""

# KEYS: n values, then their n leases, then notify's two; ARGV: notify's five. Reply: values
# deleted.
_DELETE_PUBLISH = _NOTIFY + """
local n = (#KEYS - 2) / 2
notify()
local deleted = 0
for i = 1, n do
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('DEL', KEYS[n + i])
end
return deleted
"""

# KEYS: notify's two; ARGV: notify's five. A notice with no write (clear()'s flush, and the
# notices around invalidate_tag's and delete_prefix's batches).
_PUBLISH = _NOTIFY + """
notify()
return 1
"""

# KEYS: n values, their n leases, and the tag set they were found in (if any); ARGV: the n
# keys (for SREM from the tag set). One batch of invalidate_tag or delete_prefix: its
# notices go out around the batches (RedisStore.delete_batches). Reply: values deleted.
_DELETE_BATCH = """
local n = #ARGV
local deleted = 0
for i = 1, n do
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('DEL', KEYS[n + i])
end
if #KEYS > 2 * n then
  for i = 1, n do redis.call('SREM', KEYS[2 * n + 1], ARGV[i]) end
end
return deleted
"""


class RedisStore:
    """The cache's Redis commands, every name taken from one :class:`KeyLayout`."""

    __slots__ = ("_abandon_fill", "_check_and_set", "_delete", "_delete_batch", "_discard",
                 "_fetch_or_lock", "_lane", "_lease_ms", "_lock_stale", "_log", "_publish",
                 "_set", "_set_many", "_store_fill", "client", "keys")

    def __init__(self, client: redis.Redis, keys: KeyLayout, lane: CommandLane,
                 fill_lease_ms: int, *, log_length: int = 0, log_age_ms: int = 0) -> None:
        self.client = client
        self.keys = keys
        self._lane = lane
        self._lease_ms = fill_lease_ms
        self._log = (log_length, log_age_ms)  # the tail of every notifying script's ARGV
        # The cluster layout (every name in the namespace's slot) publishes on its shard.
        publish = "SPUBLISH" if keys.hash_tags else "PUBLISH"

        # redis-py's Script: its SHA and text (the lane runs EVALSHA, EVAL on NOSCRIPT).
        def script(text: str) -> Script:
            return client.register_script(text.replace("__PUBLISH__", publish))

        self._discard = script(_DISCARD)
        self._fetch_or_lock = script(_FETCH_OR_LOCK)
        self._lock_stale = script(_LOCK_STALE)
        self._store_fill = script(_STORE_FILL)
        self._abandon_fill = script(_ABANDON_FILL)
        self._set = script(_SET_PUBLISH)
        self._check_and_set = script(_CHECK_AND_SET)
        self._set_many = script(_SET_MANY_PUBLISH)
        self._delete = script(_DELETE_PUBLISH)
        self._publish = script(_PUBLISH)
        self._delete_batch = script(_DELETE_BATCH)

    def _notify(self, message: bytes,
                published: bytes | None = None) -> tuple[str | bytes | int, ...]:
        """The five arguments every notifying script ends with (see ``_NOTIFY``)."""
        return (self.keys.channel, message, published or b"", *self._log)

    def _tail(self) -> tuple[str, str]:
        """The two keys every notifying script ends with (see ``_NOTIFY``)."""
        return self.keys.position, self.keys.log

    def close(self) -> None:
        """Give the lane's idle connections back to the pool."""
        self._lane.close()

    def ping(self) -> None:
        """One PING, on the lane's connections (a health probe opens no extra one)."""
        with mapped_errors("PING"):
            self._lane.execute("PING")

    def get(self, key: str) -> bytes | None:
        """One GET."""
        with mapped_errors("GET"):
            return self._lane.execute("GET", self.keys.value(key))  # type: ignore[no-any-return]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET for many keys."""
        value = self.keys.value
        with mapped_errors("MGET"):
            return self._lane.execute(  # type: ignore[no-any-return]
                "MGET", *[value(k) for k in keys])

    def get_many_versioned(self, keys: Sequence[str]) -> tuple[list[bytes | None], int]:
        """:meth:`get_many`, and the version every value read is at least as new as (the
        namespace's position: 0 if unknown), in the same MGET."""
        value = self.keys.value
        with mapped_errors("MGET"):
            *blobs, position = self._lane.execute(
                "MGET", *[value(k) for k in keys], self.keys.position)
        return blobs, version_of(position)

    def get_and_check_lock(self, key: str) -> tuple[bytes | None, bytes | None]:
        """The value and its fill lock's holder token (None: free), in one MGET."""
        with mapped_errors("MGET"):
            blob, holder = self._lane.execute("MGET", self.keys.value(key), self.keys.lock(key))
        return blob, holder

    def fetch_or_lock(self, key: str, lock: FillLock) -> tuple[bytes | None, bool]:
        """The value of ``key``; if there is none, try ``lock`` and, won, open a fill lease
        under its token: (value, won), one script."""
        keys = self.keys
        with mapped_errors("GET"):
            value, won = self._lane.run_script(
                self._fetch_or_lock, [keys.value(key), lock.key, keys.lease(key)],
                [lock.token, lock.ttl_ms, self._lease_ms])
        return value, bool(won)

    def lock_stale(self, key: str, blob: bytes, lock: FillLock) -> tuple[int, float]:
        """Take ``lock`` and a fill lease to refresh ``key`` if L2 still holds ``blob``, in
        one script: ``(1, 0)`` taken, ``(0, seconds)`` the lock is held that much longer,
        ``(-1, 0)`` the value changed or is gone."""
        keys = self.keys
        with mapped_errors("SET"):
            code, held_ms = self._lane.run_script(
                self._lock_stale, [keys.value(key), lock.key, keys.lease(key)],
                [blob, lock.token, lock.ttl_ms, self._lease_ms])
        return int(code), max(0, int(held_ms)) / 1000.0

    def discard(self, key: str, blob: bytes) -> bool:
        """Delete ``key`` only if it still holds ``blob`` (compare-and-delete, one script)."""
        with mapped_errors("discard"):
            return bool(self._lane.run_script(self._discard, [self.keys.value(key)], [blob]))

    def set_and_publish(
        self, key: str, blob: bytes, ttl_ms: int, message: bytes, *,
        only_if_absent: bool = False, tags: Sequence[str] = (),
        published: bytes | None = None,
    ) -> tuple[bool, int]:
        """SET (NX for ``add``), revoke fills, add ``key`` to its ``tags``' sets, and, if
        stored, send ``message`` (publishing ``published`` instead, if given); (stored,
        the write's version), stored False if NX lost."""
        keys = self.keys
        with mapped_errors("SET"):
            stored, version = self._lane.run_script(
                self._set, [keys.value(key), keys.lease(key), *map(keys.tag, tags),
                            *self._tail()],
                [blob, ttl_ms, "NX" if only_if_absent else "", *([key] if tags else ()),
                 *self._notify(message, published)])
        return bool(stored), version_of(version)

    def check_and_set(
        self, key: str, expected: bytes | None, blob: bytes, ttl_ms: int, message: bytes, *,
        published: bytes | None = None,
    ) -> tuple[bool, int]:
        """SET ``blob`` (revoking fills, with ``message``) only if L2 still holds
        ``expected`` (None: nothing); (done, the write's version), done False if another
        write came first."""
        keys = self.keys
        with mapped_errors("SET"):
            done, version = self._lane.run_script(
                self._check_and_set, [keys.value(key), keys.lease(key), *self._tail()],
                [expected or b"", blob, ttl_ms, *self._notify(message, published)])
        return bool(done), version_of(version)

    def store_fill(
        self, key: str, blob: bytes, ttl_ms: int, lock: FillLock, message: bytes, *,
        refresh: bool = False, tags: Sequence[str] = (), published: bytes | None = None,
    ) -> tuple[FillOutcome, int]:
        """Store a computed value under its lease (adding ``key`` to its ``tags``' sets),
        release ``lock``, and send ``message`` if stored. A ``refresh`` (lease taken by
        :meth:`lock_stale`) replaces the value. (What became of it, its version)."""
        keys = self.keys
        with mapped_errors("SET"):
            stored, released, leased, *version = self._lane.run_script(
                self._store_fill,
                [keys.value(key), lock.key, keys.lease(key), *map(keys.tag, tags),
                 *self._tail()],
                [blob, ttl_ms, lock.token, "refresh" if refresh else "",
                 *([key] if tags else ()), *self._notify(message, published)])
        lock.released(released)
        if stored:
            return FillOutcome.STORED, version_of(version[0])
        return (FillOutcome.BEATEN if leased else FillOutcome.REVOKED), 0

    def abandon_fill(self, key: str, lock: FillLock, *, hold_ms: int = 0) -> None:
        """Give up the fill's lease (its compute raised) and release ``lock``, or keep it
        ``hold_ms`` longer (a throttle). Never raises: a release Redis did not answer is
        logged and the lock expires by itself."""
        try:
            with mapped_errors("release"):
                released = self._lane.run_script(
                    self._abandon_fill, [lock.key, self.keys.lease(key)],
                    [lock.token, hold_ms])
        except BackendError as exc:
            lock.release_failed(exc)
            return
        lock.released(released)

    def set_many_and_publish(
        self, blobs: Sequence[tuple[str, bytes, int]], message: bytes,
        tags: Sequence[str] = (), published: bytes | None = None,
    ) -> int:
        """SET every ``(key, blob, ttl_ms)``, add each key to the ``tags``' sets, and
        send one ``message`` naming them all, atomically; the write's version."""
        names = [key for key, _, _ in blobs]
        args: list[Any] = [len(blobs)]
        for _, blob, ttl_ms in blobs:
            args += (blob, ttl_ms)
        if tags:
            args += names
        args += self._notify(message, published)
        with mapped_errors("SET"):
            return version_of(self._lane.run_script(
                self._set_many, self._with_leases(names, tags), args))

    def delete_and_publish(self, keys: Sequence[str], message: bytes) -> int:
        """DEL ``keys`` (revoking fills) and PUBLISH ``message`` atomically; how many
        existed."""
        with mapped_errors("DEL"):
            return int(self._lane.run_script(self._delete, self._with_leases(keys),
                                             self._notify(message)))

    def _with_leases(self, keys: Sequence[str], tags: Sequence[str] = ()) -> list[str]:
        layout = self.keys
        return [*map(layout.value, keys), *map(layout.lease, keys), *map(layout.tag, tags),
                *self._tail()]

    def clear_and_publish(self, message: bytes, batch: int = 500) -> int:
        """Revoke every fill, delete every value of this namespace (SCAN, never KEYS), then
        announce a flush.

        Leases first: a fill that started before the clear must not store after its key
        was deleted. (A fill that starts during the clear computes after it began.)
        """
        with mapped_errors("clear"):
            self._settled("clear")
            self._unlink_matching(self.keys.lease_prefix, batch)
            deleted = self._unlink_matching(self.keys.value_prefix, batch)
            self._settled("clear")
            self._publish(keys=self._tail(), args=self._notify(message))
        return deleted

    def _settled(self, what: str) -> None:
        """On a Redis Cluster, before and after a SCAN (a command without a key): follow
        the slot if it moved, and refuse a slot half-way through a migration, whose keys
        are on two nodes (a SCAN of either misses the other's, and the values missed would
        outlive the clear). ``CLUSTER NODES`` refused (an ACL) skips the second check."""
        if not self.keys.hash_tags:
            return
        self._lane.execute("EXISTS", self.keys.epoch)  # a MOVED here moves the client
        try:
            nodes = self._lane.execute("CLUSTER", "NODES")
        except redis.ResponseError:
            return
        mine = next((line for line in nodes.decode().splitlines() if "myself" in line), "")
        slot = key_slot(self.keys.namespace.encode())
        if f"[{slot}->-" in mine or f"[{slot}-<-" in mine:
            raise BackendUnavailableError(
                f"{what}: the namespace's cluster slot {slot} is being migrated; its keys are "
                f"on two nodes until the migration ends: try again then")

    def invalidate_tag(self, tag: str, message: bytes, batch: int = 500) -> int:
        """Delete every value in ``tag``'s set (and its fill leases), in batches of
        ``batch`` (SSCAN: bounded memory however large the set), with ``message`` sent
        before the first batch and after the last; how many values existed."""
        tag_set = self.keys.tag(tag)
        with mapped_errors("invalidate_tag"):
            return self._delete_batches(
                (self.client.sscan_iter(tag_set, count=batch)), message, batch, tag_set,
                lambda member: member.decode())

    def delete_prefix(self, prefix: str, message: bytes, batch: int = 500) -> int:
        """Delete every value whose key starts with ``prefix`` (SCAN, never KEYS), as
        :meth:`invalidate_tag` does; how many values existed."""
        keys = self.keys
        with mapped_errors("delete_prefix"):
            self._settled("delete_prefix")
            deleted = self._delete_batches(
                self.client.scan_iter(match=keys.value_match(prefix), count=batch), message,
                batch, None, lambda name: keys.key_of(name.decode()))
            self._settled("delete_prefix")
            return deleted

    def _delete_batches(self, found: Iterable[bytes], message: bytes, batch: int,
                        tag_set: str | None, key_of: Callable[[bytes], str]) -> int:
        # The notice goes out first, so that no value is deleted without one even if this
        # process dies half-way, and again last, for the values other processes read from
        # L2 (and promoted) between the first notice and their batch's delete.
        notice = self._notify(message)
        self._publish(keys=self._tail(), args=notice)
        deleted = 0
        pending: list[str] = []
        for name in found:
            pending.append(key_of(name))
            if len(pending) >= batch:
                deleted += self._delete_one_batch(pending, tag_set)
                pending = []
        if pending:
            deleted += self._delete_one_batch(pending, tag_set)
        self._publish(keys=self._tail(), args=notice)
        return deleted

    def _delete_one_batch(self, keys: list[str], tag_set: str | None) -> int:
        layout = self.keys
        names = [*map(layout.value, keys), *map(layout.lease, keys)]
        if tag_set is not None:
            names.append(tag_set)
        return int(self._delete_batch(keys=names, args=keys))

    def _unlink_matching(self, prefix: str, batch: int) -> int:
        deleted = 0
        found: list[Any] = []
        for name in self.client.scan_iter(match=glob_escape(prefix) + "*", count=batch):
            found.append(name)
            if len(found) >= batch:
                deleted += self.client.unlink(*found)
                found.clear()
        if found:
            deleted += self.client.unlink(*found)
        return deleted
