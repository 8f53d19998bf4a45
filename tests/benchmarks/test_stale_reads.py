"""The fleet benchmark's stale-read classifier, on hand-made logs (no fleet needed)."""

from __future__ import annotations

from typing import Any

from benchmarks.fleet import STALE_BOUND_S, stale_reads


def doc(reads: list[tuple[int, int, float]], writes: list[tuple[int, int, float, float]]
        ) -> dict[str, Any]:
    """One worker's log: reads (key, version, start); writes (key, version, commit, cached)."""
    return {"pid": 1, "reads": [list(col) for col in zip(*reads, strict=True)] or [[], [], []],
            "writes": [list(col) for col in zip(*writes, strict=True)] or [[], [], [], []],
            "loads": [[], [], []]}


def classify(reads: list[tuple[int, int, float]],
             writes: list[tuple[int, int, float, float]]) -> dict[str, Any]:
    return stale_reads([doc(reads, writes)], 0.0, 100.0, cache_writes=True)


WRITES = [(7, 2, 1.00, 1.01), (7, 3, 2.00, 2.01)]


def test_a_read_behind_an_update_for_longer_than_the_bound_is_lag_beyond_it() -> None:
    r = classify([(7, 2, 2.01 + STALE_BOUND_S + 0.05)], WRITES)
    assert (r["lag"], r["stale_beyond_bound"]) == (1, 1)


def test_a_read_just_behind_an_update_is_lag_within_the_bound() -> None:
    r = classify([(7, 2, 2.02)], WRITES)
    assert (r["lag"], r["stale_beyond_bound"]) == (1, 0)


def test_a_read_during_the_newer_write_is_in_flight() -> None:
    r = classify([(7, 2, 2.005)], WRITES)
    assert (r["in_flight"], r["lag"]) == (1, 0)


def test_lag_counts_from_the_first_update_after_the_served_versions_own() -> None:
    # v25 committed first but v24's cache update landed last (the app's write-order race):
    # the cache rightly held v24 until v26 landed at 3.00; a read 8 ms later is 8 ms behind,
    # not 1 s behind v25's update.
    writes = [(7, 25, 1.00, 1.01), (7, 24, 1.001, 1.02), (7, 26, 2.99, 3.00)]
    held = classify([(7, 24, 2.0)], writes)
    assert held["write_order"] == 1
    late = classify([(7, 24, 3.008)], writes)
    assert (late["lag"], late["stale_beyond_bound"]) == (1, 0)
    assert late["lag_age_ms"]["max"] < 10


def test_an_older_value_whose_update_may_have_run_last_is_write_order_not_lag() -> None:
    # v6's update call returned last (its thread stalled after the script), yet both calls
    # were open at once after their commits: Redis may have run v5's script last, and then
    # holds v5 until the next write. Nothing says the cache lags.
    writes = [(7, 5, 1.000, 1.020), (7, 6, 1.001, 1.050)]
    r = classify([(7, 5, 1.5)], writes)
    assert (r["write_order"], r["lag"], r["stale_beyond_bound"]) == (1, 0, 0)


def test_a_write_that_opened_after_the_served_one_closed_makes_it_lag() -> None:
    writes = [(7, 5, 1.000, 1.020), (7, 6, 1.030, 1.040)]
    r = classify([(7, 5, 1.5)], writes)
    assert (r["lag"], r["stale_beyond_bound"]) == (1, 1)
    assert abs(r["lag_age_ms"]["max"] - 460) < 1
