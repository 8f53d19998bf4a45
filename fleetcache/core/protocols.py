"""The seams between the cache's policies and the machinery behind them.

Small ``typing.Protocol``s, so a test or a future backend (Redis Cluster, Sentinel) swaps
an implementation in without monkeypatching. The Redis implementations live in
:mod:`fleetcache.redis`; the clock seam is :mod:`fleetcache.core.clock`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from .clock import Clock

__all__ = ["Bus", "BusReceiver", "Clock", "FillLock", "FillOutcome", "L2Store"]


#: What a notice is about: a key; several (a list); every key (None); or, as a one-entry
#: dict, every value carrying a tag (``{"t": tag}``) or every key starting with a prefix
#: (``{"p": prefix}``).
Target = str | list[str] | dict[str, str] | None


class FillOutcome(enum.Enum):
    """What became of a fill's value."""

    STORED = "stored"
    BEATEN = "beaten"  # L2 held a value already (a set() or another fill came first)
    REVOKED = "revoked"  # a write of the key during the compute, or past fill_timeout


class FillLock(Protocol):
    """One acquisition of the fleet-wide lock on a key's compute (a fresh token each)."""

    @property
    def key(self) -> str:
        """Where the lock lives in L2."""
        ...

    @property
    def token(self) -> str:
        """What its holder stores; a release deletes only this."""
        ...

    @property
    def ttl_ms(self) -> int:
        """Auto-release time: how long a dead holder blocks the key."""
        ...

    def released(self, reply: int) -> None:
        """Take the reply of a release done inside another command (0: it had expired)."""
        ...

    def release_failed(self, exc: BaseException) -> None:
        """A release Redis did not answer: logged (the lock expires by itself)."""
        ...


class L2Store(Protocol):
    """The shared tier: bytes in, bytes out, every write atomic with its notice.

    Reads raise :class:`~fleetcache.BackendError` for trouble and the caller degrades;
    writes raise it and the caller re-raises.
    """

    def get(self, key: str) -> bytes | None: ...
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def get_many_versioned(self, keys: Sequence[str]) -> tuple[list[bytes | None], int]: ...
    def get_and_check_lock(self, key: str) -> tuple[bytes | None, bytes | None]: ...
    def fetch_or_lock(self, key: str, lock: FillLock) -> tuple[bytes | None, bool]: ...
    def lock_stale(self, key: str, blob: bytes, lock: FillLock) -> tuple[int, float]: ...
    def discard(self, key: str, blob: bytes) -> bool: ...
    def set_and_publish(self, key: str, blob: bytes, ttl_ms: int, message: bytes, *,
                        only_if_absent: bool = False, tags: Sequence[str] = (),
                        published: bytes | None = None) -> tuple[bool, int]: ...
    def store_fill(self, key: str, blob: bytes, ttl_ms: int, lock: FillLock,
                   message: bytes, *, refresh: bool = False, tags: Sequence[str] = (),
                   published: bytes | None = None) -> tuple[FillOutcome, int]: ...
    def abandon_fill(self, key: str, lock: FillLock, *, hold_ms: int = 0) -> None: ...
    def check_and_set(self, key: str, expected: bytes | None, blob: bytes, ttl_ms: int,
                      message: bytes, *, published: bytes | None = None
                      ) -> tuple[bool, int]: ...
    def set_many_and_publish(self, blobs: Sequence[tuple[str, bytes, int]],
                             message: bytes, tags: Sequence[str] = (),
                             published: bytes | None = None) -> int: ...
    def delete_and_publish(self, keys: Sequence[str], message: bytes) -> int: ...
    def clear_and_publish(self, message: bytes) -> int: ...
    def invalidate_tag(self, tag: str, message: bytes) -> int: ...
    def delete_prefix(self, prefix: str, message: bytes) -> int: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


class BusReceiver(Protocol):
    """What the invalidation listener acts on: one process's L1 (and its waiters)."""

    def invalidate(self, key: str) -> None:
        """Another process changed ``key``."""
        ...

    def invalidate_tag(self, tag: str) -> None:
        """Another process invalidated every value carrying ``tag``."""
        ...

    def update(self, key: str, blob: bytes, version: int) -> None:
        """Another process wrote ``blob`` under ``key`` at ``version``."""
        ...

    def invalidate_prefix(self, prefix: str) -> None:
        """Another process deleted every key starting with ``prefix``."""
        ...

    def flush(self, gap: bool) -> None:
        """Drop everything (``gap``: notices may have been missed; keep fail-safe copies)."""
        ...

    def lease(self, until: float) -> None:
        """Serve L1 hits only before ``until`` (the listener's lease)."""
        ...

    def suspend(self) -> None:
        """Serve nothing held now, drop nothing: notices may be missed until a replay."""
        ...

    def resume(self) -> None:
        """Every missed notice was applied: serve what :meth:`suspend` held back."""
        ...


class Bus(Protocol):
    """The invalidation bus of one process: it builds notices and listens for others'."""

    @property
    def connected(self) -> bool:
        """Subscribed now (else L1 entries live only ``degraded_l1_ttl``)."""
        ...

    def message(self, key: Target, value: bytes | None = None) -> bytes:
        """The notice for ``key`` (see :data:`Target`); with ``value``, the one carrying
        that key's new envelope bytes (``sync_strategy="update"``)."""
        ...

    def renew_if_drained(self) -> bool:
        """Renew L1's lease if the listener has applied every notice that reached it and
        is waiting for more; whether it did."""
        ...

    def await_lease(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the listener to renew L1's lease; True if it did."""
        ...

    def wait_connected(self, timeout: float) -> bool: ...
    def start(self) -> None: ...
    def stop(self, timeout: float = 2.0) -> None: ...
