"""Fixtures of the chaos tests: a fault-injecting proxy in front of a server of the test's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from ..servers import Server
from ..waiting import wait_until
from .proxy import Proxy


@pytest.fixture
def proxy(own_server: Server) -> Iterator[Proxy]:
    """A :class:`Proxy` in front of ``own_server`` (``proxy.url()`` for clients)."""
    with Proxy(own_server.port) as p:
        yield p


def assert_no_new_threads(baseline: set[threading.Thread], timeout: float = 3.0) -> None:
    """Every thread started since ``baseline`` was taken has ended (polled up to ``timeout``)."""

    def extra() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in baseline and t.is_alive()]

    wait_until(lambda: not extra(), timeout, step=0.02)
    left = extra()
    assert not left, f"threads leaked: {[t.name for t in left]}"
    assert threading.active_count() <= len(baseline), (
        f"{threading.active_count()} threads alive, {len(baseline)} at the start"
    )
