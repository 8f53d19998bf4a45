"""Small helpers shared by the test modules: timing a call, running threads, closing what a
factory fixture made, serving a fakeredis TCP server, listing a namespace's data keys."""

from __future__ import annotations

import contextlib
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import redis


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(result or raised exception, seconds)``."""
    start = time.monotonic()
    try:
        result = fn()
    except Exception as exc:
        result = exc
    return result, time.monotonic() - start


def run_threads(threads: Iterable[threading.Thread], timeout: float) -> list[threading.Thread]:
    """Start every thread, then join each for up to ``timeout`` seconds; the threads (check
    ``is_alive()`` for one that did not finish)."""
    started = list(threads)
    for t in started:
        t.start()
    for t in started:
        t.join(timeout)
    return started


@contextlib.contextmanager
def closing_all() -> Iterator[Callable[[C], C]]:
    """For a factory fixture: ``keep(thing)`` returns ``thing`` and closes it at the end of
    the block (the test's teardown), in the order they were made."""
    made: list[Closable] = []

    def keep(thing: C) -> C:
        made.append(thing)
        return thing

    yield keep
    for thing in made:
        thing.close()


@contextlib.contextmanager
def serving(srv: socketserver.ThreadingTCPServer) -> Iterator[str]:
    """``srv`` (a fakeredis ``TcpFakeServer`` on a loopback port) served from a daemon thread
    for the block; its ``redis://`` URL. Shut down and closed after."""
    srv.daemon_threads = True  # handler threads must never keep the interpreter alive
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              name="fakeredis-tcp", daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{srv.server_address[1]}/0"
    srv.shutdown()
    srv.server_close()


def namespace_data_keys(raw: redis.Redis, namespace: str, match: str | None = None) -> list[bytes]:
    """Every key naming ``namespace`` (values, leases, locks: pottery stores ``redlock:{name}``),
    sorted; not the bus's replay log, epoch and position, nor the fleet view's worker
    records (``{ns}:w...``), which every process keeps whatever the data."""
    bus = {f"{namespace}:{name}".encode() for name in ("log", "epoch", "pos")}
    workers = f"{namespace}:w".encode()
    pattern = match or f"*{namespace}*"
    return sorted(k for k in raw.scan_iter(match=pattern)
                  if k not in bus and not k.startswith(workers))
