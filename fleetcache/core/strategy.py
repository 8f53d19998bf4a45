"""Named TTL presets, so call sites say *why* a value lives as long as it does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import check_seconds
from .errors import InvalidArgumentError


@dataclass(frozen=True, slots=True)
class CacheStrategy:
    """A named L2 time-to-live.

    Presets: ``REAL_TIME`` (10 s), ``SHORT_TERM`` (5 min), ``MEDIUM_TERM`` (1 h),
    ``LONG_TERM`` (3 h); ``CacheStrategy.custom(seconds)`` for anything else.
    """

    name: str
    ttl: float

    REAL_TIME: ClassVar[CacheStrategy]
    SHORT_TERM: ClassVar[CacheStrategy]
    MEDIUM_TERM: ClassVar[CacheStrategy]
    LONG_TERM: ClassVar[CacheStrategy]

    def __post_init__(self) -> None:
        check_seconds("ttl", self.ttl)

    @classmethod
    def custom(cls, ttl: float) -> CacheStrategy:
        """A strategy with an arbitrary TTL in seconds."""
        return cls("CUSTOM", ttl)


CacheStrategy.REAL_TIME = CacheStrategy("REAL_TIME", 10.0)
CacheStrategy.SHORT_TERM = CacheStrategy("SHORT_TERM", 300.0)
CacheStrategy.MEDIUM_TERM = CacheStrategy("MEDIUM_TERM", 3600.0)
CacheStrategy.LONG_TERM = CacheStrategy("LONG_TERM", 3 * 3600.0)


def resolve_ttl(ttl: float | None, strategy: CacheStrategy | None) -> float | None:
    """The seconds a call's ``ttl=`` or ``strategy=`` asks for (validated); None if it
    gives neither (the caller's default applies)."""
    if ttl is not None and strategy is not None:
        raise InvalidArgumentError("give ttl or strategy, not both")
    if strategy is not None:
        if not isinstance(strategy, CacheStrategy):
            raise InvalidArgumentError(f"strategy must be a CacheStrategy, got {strategy!r}")
        return strategy.ttl
    if ttl is None:
        return None
    return check_seconds("ttl", ttl)
