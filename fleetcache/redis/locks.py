"""The fleet half of single-flight: a pottery Redlock shared by every process.

The Redlock is only ever tried without blocking. pottery's blocking ``acquire`` polls with
random sleeps of up to 200 ms; waiters here instead wait for the *value* (see
:mod:`fleetcache.core.singleflight`), which arrives as soon as the winner stores it. The
process half (one lock per key per process) is :mod:`fleetcache.core.keyed_locks`.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import uuid
from typing import cast

import redis
from redis.commands.core import Script

from ..core import fork

logger = logging.getLogger("fleetcache")


# ``import pottery`` replaces ``json.dumps`` with a wrapper for the whole process (~35%
# slower json in the host app). If we are the first to import it, put the original back; if
# the app imported pottery itself, its choice stands.
_pottery_was_imported = "pottery" in sys.modules
_json_dumps = json.dumps
from pottery import Redlock  # noqa: E402

if not _pottery_was_imported:
    json.dumps = _json_dumps


class FleetLock(Redlock):
    """pottery's Redlock on the cache's one Redis, taken and released on the calling thread.

    Same key (``redlock:<name>``), token and compare-and-delete release as any pottery
    Redlock, so a pottery lock on the same name elsewhere excludes and is excluded, and
    pottery's ``locked()`` reads it. What differs is the transport: pottery runs every
    acquire and release in a fresh ThreadPoolExecutor thread to ask several masters at once;
    with the one master a cache has, that thread costs several times the round trip
    (TRAPS.md). Here the SET NX PX rides in the script that found the value missing, and the
    release in the script that stores the computed value, or in the one that abandons a
    failed compute (:mod:`fleetcache.redis.store`); :meth:`release` is pottery's, inline.

    One instance per acquisition (a fresh token), never shared between threads.
    """

    __slots__ = ("_client",)

    def __init__(self, client: redis.Redis, name: str, auto_release: float) -> None:
        super().__init__(key=name, masters={client}, auto_release_time=auto_release)
        self._client = client
        self._uuid = new_token()  # set by pottery's acquire, which is bypassed

    @property
    def token(self) -> str:
        """The value a holder stores under :attr:`key`; release deletes only that."""
        return self._uuid

    @property
    def ttl_ms(self) -> int:
        """Auto-release time in milliseconds (the lock's PX)."""
        return int(self.auto_release_time * 1000)

    def release(self) -> None:  # type: ignore[override]
        """Release now; a lock that expired (slow compute) or a Redis error is logged."""
        try:
            reply = _release_script(self)(keys=[self.key], args=[self._uuid],
                                          client=self._client)
        except redis.RedisError as exc:
            self.release_failed(exc)
            return
        self.released(reply)

    def release_failed(self, exc: BaseException) -> None:
        """Log a release Redis did not answer (the lock then expires by itself)."""
        logger.warning("fleetcache: could not release %s (Redis down): %s",
                       self.key, type(exc).__name__)

    def released(self, reply: int) -> None:
        """Take a release's reply: 0 means the lock had expired (and maybe passed on to
        another holder, whose lock the release left alone)."""
        if not reply:
            logger.warning("fleetcache: could not release %s: it had expired (compute "
                           "slower than lock_timeout)", self.key)


def new_token() -> str:
    """A lock token no other acquisition anywhere holds: this process's random prefix and
    a counter. pottery draws a ``uuid4`` per acquisition; that is a ``getrandom`` system
    call (about 3 us on the benchmark VM), paid here on every L1 miss, since every
    lookup that reaches Redis offers a lock. Only equality is ever asked of a token."""
    return f"{_tokens.prefix}-{next(_tokens.count)}"


class _TokenSource:
    """The prefix is drawn again in a forked child: a child with its parent's prefix and
    counter would hand out the parent's next tokens, and release its locks."""

    __slots__ = ("__weakref__", "count", "prefix")  # the fork registry holds it weakly

    def __init__(self) -> None:
        self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        self.prefix = uuid.uuid4().hex
        self.count = itertools.count(1)


_tokens = _TokenSource()
fork.register(_tokens)


def _release_script(lock: Redlock) -> Script:
    # Registered by Redlock.__init__ (once per class); pottery casts it the same way.
    return cast(Script, lock._release_script)
