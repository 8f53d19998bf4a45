"""Flight: followers wait on the leader's latch and all wake when it lands, or at their
deadline, which the leader's progress pushes on."""

from __future__ import annotations

import threading
import time

from fleetcache.core.flights import NO_VALUE, Flights


def test_every_follower_wakes_with_the_outcome() -> None:
    flights = Flights(patience=5.0)
    flight, leads = flights.join("k", 0)
    assert leads
    seen: list[object] = []

    def follow() -> None:
        mine, leader = flights.join("k", 0)
        assert not leader and mine is flight
        assert mine.wait()
        seen.append(mine.value)

    threads = [threading.Thread(target=follow) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert seen == []  # nobody passes before the leader lands
    flights.land("k", flight, "v", None)
    for t in threads:
        t.join(5)
    assert seen == ["v"] * 5
    assert flight.wait()  # a late follower passes at once
    assert len(flights) == 0


def test_a_follower_gives_up_at_the_deadline_and_progress_pushes_it_on() -> None:
    flights = Flights(patience=0.1)
    flight, _ = flights.join("k", 0)
    started = time.monotonic()
    assert not flight.wait()
    assert 0.05 <= time.monotonic() - started < 1.0
    flight.progressed()
    threading.Timer(0.05, lambda: flights.land("k", flight, NO_VALUE, None)).start()
    assert flight.wait()  # landed within the renewed patience
    assert flight.value is NO_VALUE
