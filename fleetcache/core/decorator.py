"""The ``@cache.cached`` wrapper: a stable key from the function and its arguments."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import hashlib
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import msgspec

from .codec import culprit
from .errors import InvalidArgumentError, ValueEncodeError

if TYPE_CHECKING:
    from .front import FleetCache
    from .strategy import CacheStrategy

P = ParamSpec("P")
T = TypeVar("T")

_encode = msgspec.msgpack.Encoder().encode
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def default_prefix(fn: Callable[..., Any]) -> str:
    """``fn:<module>.<qualname>``: stable across processes and restarts.

    Refused without an explicit ``key_prefix``: lambdas (every one is ``<lambda>``) and
    closures (two closures made by one factory share a name, and what they captured is not
    in the key), whose results would otherwise be served for each other's calls.
    """
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname:
        raise InvalidArgumentError(
            f"@cached needs key_prefix= for {qualname or fn!r}: lambdas have no unique name")
    if getattr(fn, "__closure__", None):
        raise InvalidArgumentError(
            f"@cached needs key_prefix= for the closure {qualname}: what it captured is not "
            f"part of the key, so closures of one factory would share results")
    return f"fn:{fn.__module__}.{qualname}"


def canonical(obj: Any, depth: int = 0) -> Any:
    """A MessagePack-encodable form of a call's arguments in which values that are equal
    *as the same type* map to equal forms, and values of different types never do.

    Plain MessagePack would make ``(1, 2)``, ``[1, 2]`` and ``{1, 2}`` one key, an Enum
    member the key of its value, and a dict with int keys fail to sort; here containers are
    tagged with their type, sets and dict items are ordered by their encoded form (so
    insertion order does not matter), and other types carry their qualified name.
    """
    kind = type(obj)
    if kind in _SCALARS:
        return obj
    if depth > 32:
        raise ValueError("arguments nested more than 32 levels")
    if kind is list or kind is tuple:
        return ["L" if kind is list else "T", [canonical(x, depth + 1) for x in obj]]
    if kind is dict:
        items = [[canonical(k, depth + 1), canonical(v, depth + 1)] for k, v in obj.items()]
        return ["D", sorted(items, key=_encode)]
    if kind is set or kind is frozenset:
        return ["S", sorted((canonical(x, depth + 1) for x in obj), key=_encode)]
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(obj, enum.Enum):
        return ["E", name, canonical(obj.value, depth + 1)]
    if isinstance(obj, dt.date | dt.time | uuid.UUID | decimal.Decimal):
        return ["V", name, str(obj)]
    if isinstance(obj, msgspec.Struct) or dataclasses.is_dataclass(obj):
        return ["O", name, canonical(msgspec.to_builtins(obj), depth + 1)]
    raise TypeError(f"Encoding objects of type {kind.__name__} is unsupported")


class CachedFunction(Generic[P, T]):
    """A function whose results live in a :class:`~fleetcache.FleetCache`.

    The key is ``prefix:blake2b(canonical(args, kwargs))`` (see :func:`canonical`): stable
    across processes and restarts (``hash()`` is salted per process, so it would split the
    fleet's cache). A positional and a keyword spelling of the same call are different keys.

    On a method it binds like a function; ``self``/``cls`` is not part of the key (as with
    dogpile.cache's ``cache_on_arguments``): every instance shares the results, so pass
    whatever distinguishes instances as an argument.
    """

    def __init__(
        self, cache: FleetCache, fn: Callable[P, T], prefix: str, ttl: float | None,
        strategy: CacheStrategy | None, *, stale_ttl: float | None = None,
        negative_ttl: float | None = None, refresh_ahead: float | None = None,
        bound: Any = None,
    ) -> None:
        self._cache = cache
        self._fn = fn
        self._prefix = prefix
        self._ttl = ttl
        self._strategy = strategy
        self._stale_ttl = stale_ttl
        self._negative_ttl = negative_ttl
        self._refresh_ahead = refresh_ahead
        self._bound = bound
        functools.update_wrapper(self, fn)

    def __get__(self, instance: Any, owner: type | None = None) -> CachedFunction[P, T]:
        if instance is None:
            return self
        return CachedFunction(self._cache, self._fn, self._prefix, self._ttl, self._strategy,
                              stale_ttl=self._stale_ttl, negative_ttl=self._negative_ttl,
                              refresh_ahead=self._refresh_ahead, bound=instance)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of this call."""
        try:
            blob = _encode(canonical([list(args), kwargs]))
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ValueEncodeError(self._prefix, culprit([args, kwargs], exc),
                                   f"arguments not encodable: {exc}") from exc
        return f"{self._prefix}:{hashlib.blake2b(blob, digest_size=16).hexdigest()}"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        fn: Callable[..., T] = self._fn
        if self._bound is not None:
            fn = functools.partial(fn, self._bound)
        return self._cache.get_or_compute(
            self.key(*args, **kwargs), lambda: fn(*args, **kwargs),
            ttl=self._ttl, strategy=self._strategy, stale_ttl=self._stale_ttl,
            negative_ttl=self._negative_ttl, refresh_ahead=self._refresh_ahead,
        )

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop this call's cached result everywhere; True if it was in L2."""
        return self._cache.delete(self.key(*args, **kwargs))
