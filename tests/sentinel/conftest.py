"""The Sentinel deployment shared by a module (starting one takes ~5 s: the sentinels must
find each other), and a fresh namespace per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .topology import Topology, topology


@pytest.fixture(scope="module")
def sentinels() -> Iterator[Topology]:
    """1 primary + 1 replica + 3 sentinels of this module's own, on loopback."""
    with topology() as topo:
        yield topo
