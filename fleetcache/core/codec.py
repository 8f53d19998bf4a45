"""MessagePack encoding of cache values inside a small typed envelope (never pickle).

Stored bytes are ``[1, expires_at_ms, payload]``, plus an HMAC when signing is on. The
envelope makes foreign bytes fail validation instead of decoding to nonsense
(``redis-cli SET k 1`` writes ``b"1"``, which plain MessagePack reads as the integer 49),
and carries the absolute L2 expiry so a
promoted L1 entry never outlives its L2 entry. Encoder and decoders are built once and
reused: building them per call costs more than the encode itself.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

import msgspec

from .errors import CorruptValueError, ValueEncodeError, ValueTooLargeError

_MAC_SIZE = 32  # HMAC-SHA256
_encode_sorted = msgspec.msgpack.Encoder(order="sorted").encode


class _Envelope(msgspec.Struct, array_like=True, frozen=True):
    version: Literal[1]
    expires_at_ms: int
    data: msgspec.Raw


class Codec:
    """Turns values into envelope bytes and back; one instance per cache, thread-safe."""

    __slots__ = ("_decode_envelope", "_decode_payload", "_encode", "_signing_key",
                 "max_value_bytes")

    def __init__(self, max_value_bytes: int, signing_key: bytes | None = None) -> None:
        self.max_value_bytes = max_value_bytes
        self._signing_key = signing_key
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode_envelope = msgspec.msgpack.Decoder(_Envelope).decode
        self._decode_payload = msgspec.msgpack.Decoder().decode

    def encode(self, key: str, value: Any, expires_at_ms: int) -> bytes:
        """Envelope bytes for ``value``, or a ``FleetCacheError`` naming key and type.

        With a signing key, an HMAC-SHA256 of the envelope *and the key* follows it: a
        value cannot be forged, nor copied from one key to another, without the secret.
        """
        try:
            blob = self._encode((1, expires_at_ms, value))
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ValueEncodeError(key, culprit(value, exc), str(exc)) from exc
        if self._signing_key is not None:
            blob += self._mac(key, blob)
        if len(blob) > self.max_value_bytes:
            raise ValueTooLargeError(key, len(blob), self.max_value_bytes)
        return blob

    def _mac(self, key: str, body: bytes) -> bytes:
        assert self._signing_key is not None
        mac = hmac.new(self._signing_key, key.encode(), hashlib.sha256)
        mac.update(b"\0")
        mac.update(body)
        return mac.digest()

    def encode_payload(self, obj: Any) -> bytes:
        """Plain MessagePack (no envelope), for bus messages."""
        return self._encode(obj)

    @staticmethod
    def encode_canonical(obj: Any) -> bytes:
        """MessagePack with dict keys sorted: equal arguments give equal bytes (key hashing)."""
        return _encode_sorted(obj)

    def decode(self, blob: bytes, key: str = "") -> tuple[Any, int]:
        """``(value, expires_at_ms)`` from ``key``'s bytes; ``CorruptValueError`` if foreign.

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
