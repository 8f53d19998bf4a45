"""MessagePack encoding of cache values inside a small typed envelope (never pickle).

Stored bytes are ``[1, expires_at_ms, payload]`` (``[2, expires_at_ms, nil]`` for a cached
:data:`~fleetcache.core.notfound.NOT_FOUND`), with the value's tags as a fourth element if
it has any (``set(..., tags=[...])``: every process that promotes the value learns them, so
an ``invalidate_tag`` notice finds it in its L1; readers of 0.1 ignore the element), plus an
HMAC when signing is on. The
envelope makes foreign bytes fail validation instead of decoding to nonsense
(``redis-cli SET k 1`` writes ``b"1"``, which plain MessagePack reads as the integer 49),
and carries the absolute L2 expiry so a
promoted L1 entry never outlives its L2 entry. Encoder and decoders are built once and
reused: building them per call costs more than the encode itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import hmac
import uuid
from typing import Any, Literal

import msgspec

from .errors import CorruptValueError, ValueEncodeError, ValueTooLargeError
from .notfound import NOT_FOUND

_MAC_SIZE = 32  # HMAC-SHA256


class _Envelope(msgspec.Struct, array_like=True, frozen=True):
    version: Literal[1, 2]  # 2: a cached NOT_FOUND (negative caching), no data
    expires_at_ms: int
    data: msgspec.Raw
    tags: tuple[str, ...] = ()


#: No tags: what most values carry.
NO_TAGS: tuple[str, ...] = ()

#: A decoded L2 value: ``(value, expires_at_ms, tags)``.
Decoded = tuple[Any, int, tuple[str, ...]]


class Codec:
    """Turns values into envelope bytes and back; one instance per cache, thread-safe."""

    __slots__ = ("_decode_envelope", "_decode_payload", "_encode", "_signing_key",
                 "max_value_bytes", "strict_types")

    def __init__(self, max_value_bytes: int, signing_key: bytes | None = None, *,
                 strict_types: bool = False) -> None:
        self.max_value_bytes = max_value_bytes
        self.strict_types = strict_types
        self._signing_key = signing_key
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode_envelope = msgspec.msgpack.Decoder(_Envelope).decode
        self._decode_payload = msgspec.msgpack.Decoder().decode

    def encode(self, key: str, value: Any, expires_at_ms: int,
               tags: tuple[str, ...] = NO_TAGS) -> bytes:
        """Envelope bytes for ``value`` (carrying ``tags``), or a ``FleetCacheError`` naming
        key and type.

        With a signing key, an HMAC-SHA256 of the envelope *and the key* follows it: a
        value cannot be forged, nor copied from one key to another, without the secret.

        A value that MessagePack would silently turn into something else (see
        :func:`changed_part`) is refused, so no process ever reads a different thing.
        """
        if value is NOT_FOUND:
            blob = self._encode((2, expires_at_ms, None, tags) if tags else
                                (2, expires_at_ms, None))
        else:
            changed = changed_part(value, self.strict_types)
            if changed is not None:
                raise ValueEncodeError(key, type(changed), _why_refused(changed))
            try:
                blob = self._encode((1, expires_at_ms, value, tags) if tags else
                                    (1, expires_at_ms, value))
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                raise ValueEncodeError(key, culprit(value, exc), str(exc)) from exc
        if self._signing_key is not None:
            blob += self._mac(key, blob)
        if len(blob) > self.max_value_bytes:
            raise ValueTooLargeError(key, len(blob), self.max_value_bytes)
        return blob

    def encode_and_read_back(
        self, key: str, value: Any, expires_at_ms: int, tags: tuple[str, ...] = NO_TAGS
    ) -> tuple[bytes, Any]:
        """:meth:`encode`, and what every reader will decode from those bytes: the writer
        keeps that, not the caller's object, so it reads what the fleet reads (a tuple as a
        list, a Struct as a dict) and later mutations of the object change nothing."""
        blob = self.encode(key, value, expires_at_ms, tags)
        if value is NOT_FOUND:
            return blob, NOT_FOUND
        body = blob[:-_MAC_SIZE] if self._signing_key is not None else blob
        return blob, self._decode_payload(self._decode_envelope(body).data)

    def _mac(self, key: str, body: bytes) -> bytes:
        assert self._signing_key is not None
        mac = hmac.new(self._signing_key, key.encode(), hashlib.sha256)
        mac.update(b"\0")
        mac.update(body)
        return mac.digest()

    def encode_payload(self, obj: Any) -> bytes:
        """Plain MessagePack (no envelope), for bus messages."""
        return self._encode(obj)

    def decode(self, blob: bytes, key: str = "") -> Decoded:
        """``(value, expires_at_ms, tags)`` from ``key``'s bytes; ``CorruptValueError`` if
        foreign.

        With a signing key, bytes whose HMAC does not verify are foreign, however well formed.
        """
        if self._signing_key is not None:
            body = blob[:-_MAC_SIZE]
            if len(blob) <= _MAC_SIZE or not hmac.compare_digest(
                self._mac(key, body), blob[-_MAC_SIZE:]
            ):
                raise CorruptValueError("signature does not verify")
            blob = body
        try:
            env = self._decode_envelope(blob)
            if env.version == 2:
                return NOT_FOUND, env.expires_at_ms, env.tags
            return self._decode_payload(env.data), env.expires_at_ms, env.tags
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptValueError(f"not a fleetcache value: {exc}") from exc

    def decode_payload(self, blob: bytes) -> Any:
        """Plain MessagePack (no envelope); ``CorruptValueError`` if malformed."""
        try:
            return self._decode_payload(blob)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptValueError(f"malformed message: {exc}") from exc


_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
_REFUSED = (enum.Enum, dt.date, dt.time, uuid.UUID, decimal.Decimal)  # datetime is a date
_MAX_DEPTH = 64


def changed_part(value: Any, strict: bool, depth: int = 0) -> Any:
    """The first part of ``value`` that would read back as another kind of thing, and is
    refused; None if none is.

    Always refused, because they would come back as plain ``str`` or ``int`` and nothing
    would tell a reader: naive datetimes, dates, times, UUIDs, Decimals and Enum members
    (msgspec encodes them as their text or value). Aware datetimes come back as the same
    instant in UTC and are kept. With ``strict`` (backends whose contract is "get returns
    what set stored"), also every container that is not a plain dict or list (tuples and
    sets read back as lists, Structs and dataclasses as dicts, subclasses as their base).
    Exact type checks come first, so the common value costs one set lookup per element.
    """
    kind = type(value)
    if kind in _SCALARS:
        return None
    if depth > _MAX_DEPTH:
        return None  # msgspec refuses deeper nesting itself
    if kind is dict:
        for k, v in value.items():
            found = changed_part(k, strict, depth + 1)
            if found is None:
                found = changed_part(v, strict, depth + 1)
            if found is not None:
                return found
        return None
    if kind is list:
        return _first_changed(value, strict, depth)
    if kind is dt.datetime:
        return value if value.tzinfo is None else None
    if isinstance(value, _REFUSED):
        return value
    if strict:
        return value if isinstance(value, tuple | set | frozenset | dict | list) or _is_record(
            value) else None
    if isinstance(value, tuple | set | frozenset | list):
        return _first_changed(value, strict, depth)
    if isinstance(value, dict):
        return changed_part(dict(value), strict, depth)
    if isinstance(value, msgspec.Struct):
        return _first_changed([getattr(value, f) for f in value.__struct_fields__], strict,
                              depth)
    if dataclasses.is_dataclass(value):
        return _first_changed([getattr(value, f.name) for f in dataclasses.fields(value)],
                              strict, depth)
    return None  # msgspec decides: supported as is, or refused by the encoder


def _first_changed(items: Any, strict: bool, depth: int) -> Any:
    for item in items:
        found = changed_part(item, strict, depth + 1)
        if found is not None:
            return found
    return None


def _is_record(value: Any) -> bool:
    return isinstance(value, msgspec.Struct) or dataclasses.is_dataclass(value)


def _why_refused(part: Any) -> str:
    if isinstance(part, enum.Enum):
        return "an Enum member would read back as its plain value: store member.value"
    if type(part) is dt.datetime:
        return ("a naive datetime would read back as str: give it a tzinfo (aware datetimes "
                "read back as datetimes in UTC)")
    if isinstance(part, _REFUSED):
        return (f"a {type(part).__name__} would read back as str: store str(value) and "
                f"convert it when you read it")
    return (f"a {type(part).__name__} would read back as a plain "
            f"{'dict' if isinstance(part, dict) or _is_record(part) else 'list'}, and "
            f"strict_types is on (values must read back as they were stored)")


def culprit(value: Any, exc: BaseException) -> type:
    """The unsupported type msgspec names in its message, else the value's own type."""
    message = str(exc)
    prefix = "Encoding objects of type "
    if message.startswith(prefix):
        name = message[len(prefix):].split(" ", 1)[0]
        for candidate in _walk_types(value):
            if candidate.__name__ == name:
                return candidate
    return type(value)


def _walk_types(value: Any, depth: int = 0) -> list[type]:
    """Types found in a value's containers (bounded depth), to name the bad part."""
    found = [type(value)]
    if depth > 8:
        return found
    children: Any = ()
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        children = value
    for child in children:
        found.extend(_walk_types(child, depth + 1))
    return found
