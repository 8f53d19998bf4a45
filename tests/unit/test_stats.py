"""The live counters and their snapshot name the same things."""

from __future__ import annotations

from dataclasses import fields

from fleetcache import CacheStats
from fleetcache.core.stats import Counters


def test_counters_and_snapshot_have_the_same_fields() -> None:
    assert [f.name for f in fields(Counters)] == [f.name for f in fields(CacheStats)]


def test_snapshot_copies_every_counter() -> None:
    counters = Counters()
    for value, f in enumerate(fields(Counters), start=1):
        setattr(counters, f.name, value)
    snapshot = CacheStats.of(counters)
    assert [getattr(snapshot, f.name) for f in fields(CacheStats)] == list(
        range(1, len(fields(Counters)) + 1))
