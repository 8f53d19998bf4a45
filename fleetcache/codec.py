"""MessagePack encoding of cache values inside a small typed envelope (never pickle).

Stored bytes are ``[1, expires_at_ms, payload]``. The envelope makes foreign bytes fail
validation instead of decoding to nonsense (``redis-cli SET k 1`` writes ``b"1"``, which
plain MessagePack reads as the integer 49), and carries the absolute L2 expiry so a
promoted L1 entry never outlives its L2 entry. Encoder and decoders are built once and
reused: building them per call costs more than the encode itself.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .errors import CorruptValueError, ValueEncodeError, ValueTooLargeError


class _Envelope(msgspec.Struct, array_like=True, frozen=True):
    version: Literal[1]
    expires_at_ms: int
    data: msgspec.Raw


class Codec:
    """Turns values into envelope bytes and back; one instance per cache, thread-safe."""

    __slots__ = ("_decode_envelope", "_decode_payload", "_encode", "max_value_bytes")

    def __init__(self, max_value_bytes: int) -> None:
        self.max_value_bytes = max_value_bytes
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode_envelope = msgspec.msgpack.Decoder(_Envelope).decode
        self._decode_payload = msgspec.msgpack.Decoder().decode

    def encode(self, key: str, value: Any, expires_at_ms: int) -> bytes:
        """Envelope bytes for ``value``, or a ``FleetCacheError`` naming key and type."""
        try:
            blob = self._encode((1, expires_at_ms, value))
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ValueEncodeError(key, culprit(value, exc), str(exc)) from exc
        if len(blob) > self.max_value_bytes:
            raise ValueTooLargeError(key, len(blob), self.max_value_bytes)
        return blob

    def encode_payload(self, obj: Any) -> bytes:
        """Plain MessagePack (no envelope), for messages and key hashing."""
        return self._encode(obj)

    def decode(self, blob: bytes) -> tuple[Any, int]:
        """``(value, expires_at_ms)`` from envelope bytes; ``CorruptValueError`` if foreign."""
        try:
            env = self._decode_envelope(blob)
            return self._decode_payload(env.data), env.expires_at_ms
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptValueError(f"not a fleetcache value: {exc}") from exc

    def decode_payload(self, blob: bytes) -> Any:
        """Plain MessagePack (no envelope); ``CorruptValueError`` if malformed."""
        try:
            return self._decode_payload(blob)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptValueError(f"malformed message: {exc}") from exc


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
