"""A fast lane for the cache's hot commands: the pool's connections, kept checked out.

redis-py checks a connection out of its pool for every command: pool locks, a ``poll()`` of
the socket for stray bytes, metrics hooks, then the release. On a CPU-bound worker that is
most of a command's cost (measured on the 2-core benchmark VM, CPU per GET: 92 us through
``Redis.get`` vs 41 us on a held connection with plain threads; 276 vs 82 us under gevent,
where every lock and poll is a greenlet-aware call). The lane keeps the connections it used
in an idle list and runs a command as send + read on one of them. They are the pool's own
connection objects, so AUTH, TLS, timeouts, the hiredis parser and the retry policy
(``Connection.retry``) are exactly the client's.

Why it is safe:

* a connection belongs to one caller between ``pop`` and ``append`` (both atomic under the
  GIL, and neither yields under gevent);
* an error in flight (timeout, reset, a greenlet killed) disconnects the connection (redis-py's
  ``Connection`` does so itself; the lane makes sure) and sends it back to the pool, so a
  late reply is never read as the next caller's; a Redis error *reply* leaves it in sync
  and it is kept;
* the connections come from the pool, so ``max_connections`` still bounds the total, and at
  most ``keep`` of them sit idle here (the rest go back to the pool for streams and others).

Commands are packed by hiredis in one C call. redis-py's packer runs its ``Encoder`` on
every argument in Python first (about 1.3 us each; the cache's scripts take 10-15 arguments,
so 20-40 us of a worker's CPU per command, measured with cProfile on the fleet's write and
fill paths). hiredis encodes ``str`` as UTF-8, which is what that ``Encoder`` does unless the
client was built with another ``encoding``: then, and without hiredis, redis-py packs.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

Packer = Callable[[tuple[Any, ...]], bytes]

_hiredis_pack: Packer | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py packs without it
    _hiredis_pack = None


class CommandLane:
    """Runs single commands on connections held out of a redis-py pool."""

    __slots__ = ("_idle", "_keep", "_pack", "_pool")

    def __init__(self, pool: redis.ConnectionPool, keep: int) -> None:
        self._pool = pool
        self._keep = keep
        self._idle: list[Any] = []
        self._pack: Packer | None = packer(pool.connection_kwargs)

    def take(self) -> Any:
        """A connection for the caller alone: an idle one of the lane, else the pool's.

        Hand it back with :meth:`execute`'s own bookkeeping, or to the pool with
        ``pool.release`` (a blocking read does: its connection may be left half-read).
        """
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = None  # checked out below, outside the handler: an error there must not
            # carry "pop from empty list" as its context
        if conn is None:
            conn = self._pool.get_connection()
        return conn

    def execute(self, *args: Any) -> Any:
        """Send one command and return its raw reply (no response callbacks: bytes/lists)."""
        conn = self.take()
        pack = self._pack
        try:
            reply = conn.retry.call_with_retry(
                lambda: _round_trip(conn, args, pack), lambda _error: conn.disconnect())
        except redis.ResponseError:
            self._put_back(conn)  # an error reply: the connection is in sync
            raise
        except BaseException:
            conn.disconnect()  # whatever was in flight is abandoned with the socket
            self._pool.release(conn)
            raise
        self._put_back(conn)
        return reply

    def run_script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``; on NOSCRIPT (a restarted or flushed server) EVAL it, which
        also loads it again."""
        try:
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.execute("EVAL", script.script, len(keys), *keys, *args)

    def close(self) -> None:
        """Hand every idle connection back to the pool (disconnected)."""
        while self._idle:
            conn = self._idle.pop()
            conn.disconnect()
            self._pool.release(conn)

    def _put_back(self, conn: Any) -> None:
        if len(self._idle) < self._keep:
            self._idle.append(conn)
        else:
            self._pool.release(conn)


def packer(connection_kwargs: dict[str, Any]) -> Packer | None:
    """hiredis's packer if it encodes as the connections' ``Encoder`` would, else None
    (redis-py's own)."""
    encoding = codecs.lookup(connection_kwargs.get("encoding", "utf-8")).name
    errors = connection_kwargs.get("encoding_errors", "strict")
    return _hiredis_pack if encoding == "utf-8" and errors == "strict" else None


def _round_trip(conn: Any, args: tuple[Any, ...], pack: Packer | None) -> Any:
    if pack is None:
        conn.send_command(*args)
    else:
        try:
            packed = [pack(args)]
        except TypeError:  # not str, bytes, int or float: redis-py's own error for it
            packed = conn._command_packer.pack(*args)
        conn.send_packed_command(packed)
    return conn.read_response()
