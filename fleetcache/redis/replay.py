"""The replay log: how a listener that lost its connection learns what it missed.

Every write script appends its notice to the namespace's log (a stream,
:data:`~fleetcache.redis.keys.KeyLayout.log`) as it publishes it, and publishes the entry's
id with it (:mod:`fleetcache.redis.store`). A listener remembers the id of the last notice it
applied, its *position*. After a gap it reads the entries past its position and applies
them, and L1 is kept. It cannot, and then L1 is flushed, when:

* the entries right after its position were trimmed (``max-deleted-entry-id`` of ``XINFO
  STREAM`` has passed it: the log's length or age was exceeded), or the log is gone, or it
  was deleted and started again (it no longer holds or accounts for the position itself). A
  process with the log turned off deletes it with each notice it sends, so that nobody
  trusts a log missing those;
* the log ends before its position (the server went back in time: a restart from an older
  snapshot, a failover to a replica that had not caught up);
* the server is another one (its ``run_id`` changed: a restart or a failover, whose last
  writes may be lost with their log entries), or the namespace's *epoch* changed: a random
  token kept under :data:`~fleetcache.redis.keys.KeyLayout.epoch` and created by the first
  listener that finds it missing. An operator's ``FLUSHALL`` or a restart without persistence
  deletes it; listeners check it on every watchdog beat, so such a flush, which publishes
  nothing, is noticed within the same bound as a dead connection.

A position is always the id of an entry the log held: a listener that finds no log at
all starts it with a marker entry (no notice in it) and takes that. Each page of the log is
read with the trim check in one ``MULTI``, so a trim landing between the two cannot hide a
lost entry. ``max-deleted-entry-id`` appeared in Redis 7.0
(Valkey 7.2); on an older server every gap flushes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

from .keys import KeyLayout

#: A stream id as ``(milliseconds, sequence)``: ordered as Redis orders them.
Position = tuple[int, int]

_PAGE = 1000  # log entries read per round trip

# KEYS: epoch; ARGV: a fresh token. The namespace's epoch, created if missing.
_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if epoch then return epoch end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


def parse_position(raw: bytes | str) -> Position:
    """``b"1733150000000-3"`` as ``(1733150000000, 3)``; ValueError if it is not an id."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


_SEQ_SPAN = 1 << 32  # stream ids within one millisecond: far fewer than this


def version_of(entry_id: bytes | str | None) -> int:
    """A write's version, from its log entry id (``b"1733150000000-3"``): one int, ordered
    as Redis ordered the writes. 0 where there is none (no log, nothing written yet)."""
    if not entry_id:
        return 0
    ms, seq = parse_position(entry_id)
    return ms * _SEQ_SPAN + seq


@dataclass(frozen=True, slots=True)
class Identity:
    """Which server and which life of the namespace a position belongs to."""

    run_id: str | None  # None where the server does not say (INFO refused)
    epoch: bytes


class ReplayLog:
    """Reads the log and the namespace's identity (on the client's own connections)."""

    __slots__ = ("_client", "_epoch", "_keys", "_length")

    def __init__(self, client: redis.Redis, keys: KeyLayout, length: int) -> None:
        self._client = client
        self._keys = keys
        self._length = length
        self._epoch = client.register_script(_EPOCH)

    def epoch(self) -> bytes:
        """The namespace's epoch (created now if missing: the namespace starts a new life)."""
        return bytes(self._epoch(keys=[self._keys.epoch], args=[os.urandom(12).hex()]))

    def identity(self) -> Identity:
        """The server's run id and the namespace's epoch.

        The epoch first: it is a keyed command, so on a Redis Cluster a slot that moved
        answers ``MOVED`` and the client follows it before INFO, which has no key, asks
        whichever server it is on (:mod:`fleetcache.redis.cluster`)."""
        epoch = self.epoch()
        try:
            run_id = self._client.info("server").get("run_id")
        except ResponseError:  # INFO renamed or refused by an ACL: the epoch still guards
            run_id = None
        return Identity(None if run_id is None else str(run_id), epoch)

    def tail(self) -> Position:
        """The id of the last entry ever logged; with no log yet, it is started now with a
        marker entry, whose id is returned (see the module doc)."""
        try:
            info = self._client.xinfo_stream(self._keys.log)
        except ResponseError:  # no such key
            marker = self._client.xadd(self._keys.log, {"m": "1"}, maxlen=self._length,
                                       approximate=True)
            return parse_position(marker)
        return parse_position(info["last-generated-id"])

    def replay(self, position: Position, apply: Callable[[bytes], None]) -> Position | None:
        """Hand every notice logged after ``position`` to ``apply``, oldest first; the
        position of the last one, or None if the log cannot cover the gap (see the module
        doc: then the caller flushes)."""
        log = self._keys.log
        while True:
            pipe = self._client.pipeline(transaction=True)
            pipe.xinfo_stream(log)
            pipe.xrange(log, min=f"({position[0]}-{position[1]}", count=_PAGE)
            info, entries = pipe.execute(raise_on_error=False)
            if isinstance(info, ResponseError) or not _covers(info, position):
                return None
            if isinstance(entries, Exception):
                raise entries
            for entry_id, fields in entries:
                notice = fields.get(b"n")
                if notice is not None:
                    apply(notice)
                position = parse_position(entry_id)
            if len(entries) < _PAGE:
                return position


def _covers(info: dict[str, Any], position: Position) -> bool:
    """Whether the log still holds every entry after ``position`` (an id it once held)."""
    raw_deleted = info.get("max-deleted-entry-id")
    if raw_deleted is None:  # Redis < 7.0: a trim cannot be told apart from a quiet log
        return False
    deleted = parse_position(raw_deleted)
    if deleted > position or parse_position(info["last-generated-id"]) < position:
        return False  # trimmed past it, or the log went back in time
    if deleted == position:
        return True  # everything up to it trimmed, everything after it kept
    # Trims only take the oldest entries: the position is still there, or the log was
    # deleted and started again without it.
    first = info.get("first-entry")
    return first is not None and parse_position(first[0]) <= position
