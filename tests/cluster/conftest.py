"""The Redis Cluster shared by a module (creating one takes a few seconds), and a fresh
namespace per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .topology import Cluster, cluster


@pytest.fixture(scope="module")
def nodes() -> Iterator[Cluster]:
    """3 primaries + 3 replicas of this module's own, on loopback."""
    with cluster() as topo:
        yield topo
