"""Redis Streams on the cache's own connection pool: XADD with trimming, XREVRANGE, XREAD.

Fields are ``str -> str``. A blocking XREAD outlives the cache's short socket timeout, so it
borrows a pool connection and reads its reply with a per-call timeout of ``block_ms`` plus a
margin, instead of needing a second pool with long timeouts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import redis

from ..core.errors import CorruptValueError, InvalidArgumentError
from .errors import mapped_errors
from .keys import KeyLayout
from .lane import CommandLane

StreamEntry: TypeAlias = tuple[str, dict[str, str]]
Fields: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]


class Streams:
    """Stream helpers; stream names come from the cache's :class:`KeyLayout`."""

    __slots__ = ("_client", "_keys", "_lane", "_margin")

    def __init__(self, client: redis.Redis, keys: KeyLayout, lane: CommandLane,
                 timeout_margin: float) -> None:
        self._client = client
        self._keys = keys
        self._lane = lane
        self._margin = timeout_margin

    def publish(self, stream: str, fields: Fields, maxlen: int) -> str:
        """XADD with ``MAXLEN ~ maxlen``; returns the new entry id."""
        _check_positive_int("maxlen", maxlen)
        pairs = _validate_fields(fields)
        with mapped_errors("XADD"):
            entry_id = self._client.xadd(
                self._key(stream), pairs, maxlen=maxlen, approximate=True  # type: ignore[arg-type]
            )
        return _text(entry_id)

    def latest(self, stream: str, count: int) -> list[StreamEntry]:
        """The newest ``count`` entries, newest first."""
        _check_positive_int("count", count)
        with mapped_errors("XREVRANGE"):
            raw = self._client.xrevrange(self._key(stream), count=count)
        return [_entry(item) for item in raw]  # type: ignore[union-attr]

    def read(
        self, stream: str, last_id: str, count: int, block_ms: int | None
    ) -> list[StreamEntry]:
        """Entries after ``last_id`` (``"$"``: only new ones), oldest first.

        With ``block_ms``, waits up to that long for the first entry; an empty list means
        nothing arrived.
        """
        _check_positive_int("count", count)
        if not isinstance(last_id, str) or not last_id:
            raise InvalidArgumentError("last_id must be a non-empty str such as '$' or '0-0'")
        args: list[Any] = ["XREAD", "COUNT", count]
        if block_ms is not None:
            _check_positive_int("block_ms", block_ms)
            args += ["BLOCK", block_ms]
        args += ["STREAMS", self._key(stream), last_id]
        with mapped_errors("XREAD"):
            if block_ms is None:
                reply = self._client.execute_command(*args)  # type: ignore[no-untyped-call, unused-ignore]
            else:
                reply = self._blocking(args, block_ms / 1000 + self._margin)
        if not reply:
            return []
        # One stream was asked for: [[name, entries]] (RESP2, parsed or raw) or
        # {name: entries} (RESP3).
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return [_entry(item) for item in entries]

    def _blocking(self, args: list[Any], timeout: float) -> Any:
        # The lane's idle connections first: they are the pool's, and a blocking read must
        # not fail for want of a slot while they sit idle.
        pool = self._client.connection_pool
        conn = self._lane.take()
        try:
            conn.send_command(*args)
            return conn.read_response(timeout=timeout)
        except BaseException:
            conn.disconnect()  # a half-read reply must never reach the next borrower
            raise
        finally:
            pool.release(conn)

    def _key(self, stream: str) -> str:
        if not isinstance(stream, str) or not stream:
            raise InvalidArgumentError("stream name must be a non-empty str")
        return self._keys.stream(stream)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")


def _validate_fields(fields: Fields) -> dict[str, str]:
    items = fields.items() if isinstance(fields, Mapping) else fields
    pairs: dict[str, str] = {}
    try:
        for field, value in items:
            if not isinstance(field, str) or not isinstance(value, str):
                raise InvalidArgumentError(
                    f"stream fields must be str -> str, got {type(field).__name__} -> "
                    f"{type(value).__name__} for field {field!r}"
                )
            if field in pairs:  # a mapping cannot repeat a field; pairs must not either
                raise InvalidArgumentError(f"stream field {field!r} given twice")
            pairs[field] = value
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidArgumentError):
            raise
        raise InvalidArgumentError("fields must be a mapping or a list of (str, str)") from exc
    if not pairs:
        raise InvalidArgumentError("a stream entry needs at least one field")
    return pairs


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _entry(item: Any) -> StreamEntry:
    entry_id, flat = item
    pairs = flat.items() if isinstance(flat, dict) else _pairs(flat)  # parsed, or raw RESP2
    try:
        return _text(entry_id), {_text(k): _text(v) for k, v in pairs}
    except UnicodeDecodeError as exc:  # another producer wrote bytes that are not text
        raise CorruptValueError(
            f"stream entry {_text(entry_id)} holds a field that is not UTF-8 text ({exc}); "
            f"fleetcache streams carry str -> str fields") from exc


def _pairs(flat: Any) -> Any:
    it = iter(flat)  # [field, value, field, value, ...]
    return zip(it, it, strict=True)
