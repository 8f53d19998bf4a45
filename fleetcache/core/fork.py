"""Reset process-bound state in a forked child, once per fork, off the hot path.

A cache made before ``fork()`` (gunicorn ``--preload``) must not share sockets, threads or
locks with its parent: a PubSub socket shared across processes splits the messages between
them, the listener thread does not exist in the child, and a lock held by a parent thread
at fork time stays held forever in the child. ``os.register_at_fork`` runs the reset once,
so the read path never pays for ``os.getpid()``.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while ``obj`` lives."""
    _live.add(obj)


def live() -> list[ForkAware]:
    """Every registered object still alive (for the gunicorn hooks)."""
    return list(_live)


def _reset_all() -> None:
    for obj in list(_live):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_all)
