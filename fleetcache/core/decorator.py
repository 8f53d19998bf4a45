"""The ``@cache.cached`` wrapper: a stable key from the function and its arguments."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, ParamSpec, TypeVar

from .codec import Codec, culprit
from .errors import ValueEncodeError

if TYPE_CHECKING:
    from .front import FleetCache
    from .strategy import CacheStrategy

P = ParamSpec("P")
T = TypeVar("T")


class CachedFunction(Generic[P, T]):
    """A function whose results live in a :class:`~fleetcache.FleetCache`.

    The key is ``prefix:blake2b(msgpack(args, kwargs))`` with every dict's keys sorted (so
    keyword order and dict insertion order do not matter): stable across processes and
    restarts (``hash()`` is salted per process, so it would split the fleet's cache). A
    positional and a keyword spelling of the same call are different keys.
    """

    def __init__(
        self, cache: FleetCache, fn: Callable[P, T], prefix: str, ttl: float | None,
        strategy: CacheStrategy | None,
    ) -> None:
        self._cache = cache
        self._fn = fn
        self._prefix = prefix
        self._ttl = ttl
        self._strategy = strategy
        functools.update_wrapper(self, fn)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of this call."""
        try:
            blob = Codec.encode_canonical((args, kwargs))
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ValueEncodeError(self._prefix, culprit([args, kwargs], exc),
                                   f"arguments not encodable: {exc}") from exc
        return f"{self._prefix}:{hashlib.blake2b(blob, digest_size=16).hexdigest()}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._cache.get_or_compute(
            self.key(*args, **kwargs), lambda: self._fn(*args, **kwargs),
            ttl=self._ttl, strategy=self._strategy,
        )

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop this call's cached result everywhere; True if it was in L2."""
        return self._cache.delete(self.key(*args, **kwargs))
