"""Forked workers race on hot keys under injected faults; no read may be staler than the bound.

The soak itself lives in :mod:`.soak` (also runnable: ``python -m tests.chaos.soak``). Its
length here is ``FLEETCACHE_SOAK_SECONDS`` (default 5: the CI short form).
"""

from __future__ import annotations

import os

import pytest

from ..servers import Server
from .soak import Read, Write, check, run_soak

SECONDS = float(os.environ.get("FLEETCACHE_SOAK_SECONDS", "5"))
BOUND = 1.5  # README: max(1 s + 0.5 s watchdog, 1 s degraded_l1_ttl) with the defaults


def _summary(result: dict[str, object]) -> str:
    keys = ("seconds", "reads", "reader_reads", "writes", "failed_writes", "pct_fresh",
            "stale_within_bound", "pct_within_bound", "stale_beyond_strict_bound",
            "stale_beyond_bound", "worst_staleness", "p99_staleness_of_stale",
            "worst_read", "impossible_reads", "reconnects", "redis_errors", "faults")
    return ", ".join(f"{k}={result[k]}" for k in keys)


@pytest.mark.slow
def test_race_soak_under_faults(own_server: Server) -> None:
    result = run_soak(own_server.port, SECONDS, procs=4, keys=8, faults=True)
    summary = _summary(result)
    print(f"\nsoak: {summary}")
    assert not result["worker_errors"], result["worker_errors"]
    assert result["overlapping_writes"] == 0, "writers of one key were not serialised"
    assert result["impossible_reads"] == 0, f"reads of values never written: {summary}"
    # The soak must have done enough, and the faults must have hit every worker.
    assert result["reads"] >= 500 * SECONDS and result["reader_reads"] >= 100 * SECONDS, summary
    assert result["writes"] >= 20 * SECONDS, summary
    assert result["l1_hits"] > 0 and result["l2_hits"] > 0, summary
    assert all(n >= 1 for n in result["reconnects"]), f"a worker never lost its bus: {summary}"
    assert result["stale_beyond_bound"] == 0, (
        f"{result['stale_beyond_bound']} reads staler than {BOUND} s + {result['slack']} s "
        f"slack (worst {result['worst_staleness']} s): {summary}")


@pytest.mark.slow
def test_soak_catches_a_deaf_listener(own_server: Server) -> None:
    """Negative control: the reader's listener drops every invalidation (sabotaged in the
    child only), so its L1 serves old versions for l1_ttl. The soak must say so."""
    result = run_soak(own_server.port, 3.0, procs=2, keys=4, faults=False, sabotage=True)
    print(f"\ndeaf listener: {result['stale_beyond_bound']} of {result['reads']} reads beyond "
          f"the bound, worst {result['worst_staleness']} s")
    assert result["stale_beyond_bound"] > 0, f"staleness went unnoticed: {_summary(result)}"
    assert result["worst_staleness"] > BOUND + result["slack"]


def test_checker() -> None:
    """The checker on hand-made histories (key 0; bound 1 s, no slack)."""

    def verdict(writes: list[Write], read: Read) -> str:
        v = check(writes, [read], bound=1.0, slack=0.0)
        for name in ("impossible_reads", "stale_beyond_bound", "stale_within_bound"):
            if v[name]:
                return name
        return "fresh"

    s1 = Write(0, 1, "s", 0.0, 0.1, True)
    s2 = Write(0, 2, "s", 1.0, 1.1, True)
    d3 = Write(0, 3, "d", 2.0, 2.1, True)
    s4_failed = Write(0, 4, "s", 3.0, 3.1, False)
    assert verdict([s1, s2], Read(0, 2, 5.0, 5.0)) == "fresh"
    assert verdict([s1, s2], Read(0, 1, 1.5, 1.5)) == "stale_within_bound"
    assert verdict([s1, s2], Read(0, 1, 2.2, 2.2)) == "stale_beyond_bound"
    assert verdict([s1, s2], Read(0, 1, 1.05, 1.05)) == "fresh"  # s2 not completed yet
    assert verdict([s1], Read(0, None, 0.05, 0.05)) == "fresh"  # initial absence
    assert verdict([s1], Read(0, None, 1.2, 1.2)) == "stale_beyond_bound"
    assert verdict([s1, s2, d3], Read(0, None, 1.95, 2.05)) == "fresh"  # concurrent delete
    assert verdict([s1, s2, d3], Read(0, None, 9.0, 9.0)) == "fresh"
    assert verdict([s1, s2, d3], Read(0, 2, 3.2, 3.2)) == "stale_beyond_bound"
    assert verdict([s1, s2], Read(0, 7, 1.0, 1.0)) == "impossible_reads"  # never written
    assert verdict([s1, s2], Read(0, 2, 0.5, 0.6)) == "impossible_reads"  # from the future
    # A failed write may or may not have landed: reading it is fine, and it is no reference.
    assert verdict([s1, s2, d3, s4_failed], Read(0, 4, 9.0, 9.0)) == "fresh"
    assert verdict([s1, s2, d3, s4_failed], Read(0, None, 9.0, 9.0)) == "fresh"
    assert check([s2, s1], [], 1.0)["overlapping_writes"] == 0
    assert check([s1, Write(0, 2, "s", 0.05, 0.2, True)], [], 1.0)["overlapping_writes"] == 1
