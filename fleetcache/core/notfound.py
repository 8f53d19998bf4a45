"""``NOT_FOUND``: what a compute returns when there is nothing to cache (negative caching).

A compute that looks something up and finds nothing returns ``NOT_FOUND`` instead of a
value; with ``get_or_compute(..., negative_ttl=N)`` that answer is cached, for ``N``
seconds (usually far shorter than a value's TTL), fleet-wide, and every caller gets
``NOT_FOUND`` back until it expires or the key is written. A cached ``None`` is a value:
``NOT_FOUND`` is the absence of one. Plain ``get`` reads a cached ``NOT_FOUND`` as a miss.
"""

from __future__ import annotations

from typing import Final


class NotFound:
    """The type of :data:`NOT_FOUND` (one instance; falsy)."""

    __slots__ = ()
    _instance: NotFound | None = None

    def __new__(cls) -> NotFound:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "fleetcache.NOT_FOUND"

    def __bool__(self) -> bool:
        return False


NOT_FOUND: Final = NotFound()
