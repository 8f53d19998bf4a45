"""LocalStore: TTL on a fake clock (never sleeps), frequency-based capacity, and the ``seq``
guard."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

import fleetcache.core.l1 as l1_module
from fleetcache.core.l1 import LocalStore
from fleetcache.core.stats import Counters
from fleetcache.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """The injected clock seam: monotonic readings start at 1000.0 and move on advance()."""
    return FakeClock()


def value_of(store: LocalStore, key: str) -> object:
    entry = store.get(key)
    assert entry is not None, f"{key!r} should be live"
    return entry[0]


# -- TTL -------------------------------------------------------------------------------------


def test_entry_is_live_until_its_ttl_and_gone_at_it(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("k", "v", 5.0, store.seq)
    assert store.get("k") == ["v", 1005.0, 2, 1005.0]  # value, expiry, count, usable until
    clock.advance(4.999)
    assert value_of(store, "k") == "v"
    clock.advance(0.001)  # exactly at expires_at: expired
    assert store.get("k") is None


def test_each_entry_has_its_own_ttl(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("short", 1, 1.0, store.seq)
    store.put("long", 2, 10.0, store.seq)
    clock.advance(2.0)
    assert store.get("short") is None
    assert value_of(store, "long") == 2


def test_promoted_entry_expires_too(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    assert store.store_if_unchanged("k", "v", 3.0, store.seq)
    assert value_of(store, "k") == "v"
    clock.advance(3.0)
    assert store.get("k") is None


def test_reput_restarts_the_ttl(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("k", "old", 5.0, store.seq)
    clock.advance(4.0)
    store.put("k", "new", 5.0, store.seq)
    clock.advance(4.0)  # 8 s after the first put, 4 s after the second
    assert value_of(store, "k") == "new"


def test_cached_none_is_a_live_entry_not_a_miss(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("k", None, 5.0, store.seq)
    assert store.get("k") == [None, 1005.0, 2, 1005.0]


def test_missing_key_is_none(clock: FakeClock) -> None:
    assert LocalStore(10, clock).get("nope") is None


# -- capacity: frequency decides who stays -------------------------------------------------


def fill(store: LocalStore, *keys: str, hits: int = 0) -> None:
    for key in keys:
        store.put(key, key.upper(), 60.0, store.seq)
        for _ in range(hits):
            value_of(store, key)


def test_a_full_l1_admits_a_newcomer_only_once_it_is_asked_for_more(clock: FakeClock) -> None:
    counters = Counters()
    store = LocalStore(3, clock, counters)
    fill(store, "a", "b", "c")
    assert store.put("d", "D", 60.0, store.seq) is False  # once, like each resident
    assert store.get("d") is None and len(store) == 3
    assert counters.l1_rejections == 1 and counters.l1_evictions == 0
    assert store.store_if_unchanged("d", "D", 60.0, store.seq) is True  # its second miss
    assert value_of(store, "d") == "D" and len(store) == 3
    assert counters.l1_evictions == 1
    assert sum(store.get(k) is None for k in "abc") == 1


def test_hits_keep_an_entry_and_the_weakest_goes(clock: FakeClock) -> None:
    store = LocalStore(3, clock)
    fill(store, "a", hits=3)
    fill(store, "b", hits=2)
    fill(store, "c")
    for _ in range(2):
        store.store_if_unchanged("d", "D", 60.0, store.seq)
    assert store.get("c") is None  # no hits: the weakest
    assert [value_of(store, k) for k in "abd"] == ["A", "B", "D"]


def test_an_expired_entry_makes_room_whatever_its_hits(clock: FakeClock) -> None:
    store = LocalStore(2, clock)
    store.put("old", 1, 1.0, store.seq)
    for _ in range(10):
        value_of(store, "old")
    fill(store, "b")
    clock.advance(2.0)
    assert store.put("c", 3, 60.0, store.seq) is True  # first ask, but "old" is dead
    assert "old" not in store.data
    assert value_of(store, "b") == "B" and value_of(store, "c") == 3


def test_a_sweep_of_one_off_keys_leaves_the_hot_set_in_place(clock: FakeClock) -> None:
    store = LocalStore(100, clock)
    hot = [f"hot{i}" for i in range(100)]
    fill(store, *hot, hits=2)
    for i in range(500):  # five times the capacity, each key read once
        store.store_if_unchanged(f"cold{i}", i, 60.0, store.seq)
    assert all(store.get(k) is not None for k in hot)


def test_an_invalidated_hot_key_is_admitted_again_at_once(clock: FakeClock) -> None:
    store = LocalStore(2, clock)
    fill(store, "hot", hits=5)
    fill(store, "b", hits=3)
    store.invalidate("hot")  # a write elsewhere
    fill(store, "warm", hits=3)  # takes the free slot
    assert store.store_if_unchanged("hot", "HOT", 60.0, store.seq) is True  # its hits count
    assert value_of(store, "hot") == "HOT"


def test_counts_halve_so_old_popularity_fades(clock: FakeClock,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l1_module, "AGE_EVERY", 2)  # halve every 2 x capacity misses
    store = LocalStore(2, clock)
    fill(store, "was-hot", hits=8)
    fill(store, "b")  # 2 misses counted so far
    store.store_if_unchanged("x", 0, 60.0, store.seq)  # 3
    store.store_if_unchanged("x", 0, 60.0, store.seq)  # 4th: everything halves first
    assert store.data["was-hot"][2] == 4


def test_reput_of_an_existing_key_at_capacity_evicts_nothing(clock: FakeClock) -> None:
    store = LocalStore(2, clock)
    store.put("a", 1, 60.0, store.seq)
    store.put("b", 2, 60.0, store.seq)
    value_of(store, "a")
    store.put("a", 10, 60.0, store.seq)
    assert len(store) == 2
    assert store.data["a"][2] == 2  # replaced in place, its count kept (let in + a hit)
    assert value_of(store, "a") == 10
    assert value_of(store, "b") == 2
    assert store.store_if_unchanged("b", 20, 60.0, store.seq)
    assert len(store) == 2
    assert value_of(store, "a") == 10
    assert value_of(store, "b") == 20


def test_capacity_one(clock: FakeClock) -> None:
    store = LocalStore(1, clock)
    store.put("a", 1, 60.0, store.seq)
    store.put("b", 2, 60.0, store.seq)
    assert value_of(store, "a") == 1  # b asked for once, a as often: a stays
    store.put("b", 2, 60.0, store.seq)
    store.put("b", 2, 60.0, store.seq)
    assert store.get("a") is None
    assert value_of(store, "b") == 2
    assert len(store) == 1


def test_capacity_zero_keeps_nothing(clock: FakeClock) -> None:
    store = LocalStore(0, clock)
    assert store.put("a", 1, 60.0, store.seq) is False
    assert store.store_if_unchanged("a", 1, 60.0, store.seq) is False
    assert len(store) == 0


# -- seq: every mutation voids in-flight promotions -------------------------------------------


def test_put_bumps_seq(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    before = store.seq
    store.put("k", 1, 60.0, store.seq)
    assert store.seq > before


def test_invalidate_bumps_seq_and_reports_presence(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("k", 1, 60.0, store.seq)
    before = store.seq
    assert store.invalidate("k") is True
    assert store.seq > before
    assert store.get("k") is None
    assert "k" not in store.data
    before = store.seq
    assert store.invalidate("k") is False  # absent key: still a move (a notice arrived)
    assert store.seq > before


def test_clear_bumps_seq_and_empties(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("a", 1, 60.0, store.seq)
    store.put("b", 2, 60.0, store.seq)
    before = store.seq
    store.clear()
    assert store.seq > before
    assert len(store) == 0
    assert store.get("a") is None


def test_store_if_unchanged_stores_when_nothing_moved(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    seq = store.seq
    assert store.store_if_unchanged("k", "v", 60.0, seq) is True
    assert value_of(store, "k") == "v"


@pytest.mark.parametrize(
    "move",
    [
        pytest.param(lambda s: s.put("k", "fresh", 60.0, s.seq), id="put-same-key"),
        pytest.param(lambda s: s.put_many([("k", "fresh")], 60.0, s.seq), id="put-many"),
        pytest.param(lambda s: s.invalidate("k"), id="invalidate-same-key"),
        pytest.param(lambda s: s.clear(), id="clear"),
    ],
)
def test_store_if_unchanged_refuses_after_a_move_of_its_key(
    clock: FakeClock, move: Callable[[LocalStore], object]
) -> None:
    store = LocalStore(10, clock)
    seq = store.seq  # noted before the (simulated) L2 read
    move(store)
    assert store.store_if_unchanged("k", "stale", 60.0, seq) is False
    assert store.store_many_if_unchanged([("k", "stale", 60.0, ())], seq) == 0
    entry = store.get("k")
    assert entry is None or entry[0] == "fresh"


@pytest.mark.parametrize(
    "move",
    [
        pytest.param(lambda s: s.put("other", 1, 60.0, s.seq), id="put-other-key"),
        pytest.param(lambda s: s.invalidate("other"), id="invalidate-other-key"),
    ],
)
def test_a_move_of_another_key_does_not_void_a_promotion(
    clock: FakeClock, move: Callable[[LocalStore], object]
) -> None:
    store = LocalStore(10, clock)
    seq = store.seq
    move(store)
    assert store.store_if_unchanged("k", "v", 60.0, seq) is True
    assert value_of(store, "k") == "v"


def test_forgetting_old_moves_refuses_every_read_noted_before(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(l1_module, "_TOUCHED_LIMIT", 3)
    store = LocalStore(10, clock)
    early = store.seq
    for key in ("a", "b", "c", "d"):  # the 4th move drops the memory of the first 3
        store.invalidate(key)
    assert len(store._touched) <= 3
    assert store.store_if_unchanged("k", "v", 60.0, early) is False  # cannot know: refuse
    assert store.store_if_unchanged("a", "v", 60.0, early) is False
    assert store.store_if_unchanged("k", "v", 60.0, store.seq) is True


def test_put_many_drops_only_the_keys_that_moved(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    seq = store.seq
    store.invalidate("b")  # a newer remote write of b landed before our reply
    assert store.put_many([("a", 1), ("b", 2)], 60.0, seq) == 1
    assert value_of(store, "a") == 1
    assert store.get("b") is None


def test_refused_promotion_leaves_the_newer_write(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    seq = store.seq
    store.put("k", "new", 60.0, store.seq)
    assert not store.store_if_unchanged("k", "old", 60.0, seq)
    assert value_of(store, "k") == "new"


def test_refused_promotion_does_not_evict(clock: FakeClock) -> None:
    store = LocalStore(1, clock)
    seq = store.seq
    store.put("a", 1, 60.0, store.seq)
    store.invalidate("b")
    assert not store.store_if_unchanged("b", 2, 60.0, seq)
    assert value_of(store, "a") == 1


def test_put_after_a_move_drops_the_key_instead_of_storing(clock: FakeClock) -> None:
    """Our own write raced a newer one whose notice arrived first: keep neither."""
    store = LocalStore(capacity=10, clock=clock)
    store.put("k", "ours-old", 60.0, store.seq)
    seq = store.seq  # taken before our SET is sent
    store.invalidate("k")  # a newer write elsewhere, applied before our reply came back
    store.put("k", "newer-remote", 60.0, store.seq)  # e.g. promoted meanwhile
    assert store.put("k", "ours", 60.0, seq) is False
    assert store.get("k") is None
    assert store.seq > seq + 1


def test_batch_promotion_stores_all_with_their_ttls_and_respects_capacity(
    clock: FakeClock,
) -> None:
    store = LocalStore(capacity=3, clock=clock)
    store.store_if_unchanged("old", "o", 60, store.seq)
    stored = store.store_many_if_unchanged([("a", 1, 10, ()), ("b", 2, 20, ()), ("c", 3, 30, ())],
                                           store.seq)
    assert stored == 2  # c, asked for once like every resident, is not let in
    assert store.get("c") is None
    clock.advance(15)
    assert store.get("a") is None
    assert store.get("b") == [2, 1020.0, 2, 1020.0]
    assert value_of(store, "old") == "o"


def test_batch_promotion_refuses_only_the_keys_that_moved(clock: FakeClock) -> None:
    store = LocalStore(capacity=10, clock=clock)
    seq = store.seq
    store.invalidate("b")
    assert store.store_many_if_unchanged([("a", 1, 10, ()), ("b", 2, 10, ())], seq) == 1
    assert value_of(store, "a") == 1
    assert store.get("b") is None


def test_hits_stop_when_the_listener_lease_runs_out(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.store_if_unchanged("k", "v", 60, store.seq)
    assert value_of(store, "k") == "v"  # no lease yet (bus never up): served
    store.fresh_until = clock.monotonic() + 0.05
    clock.advance(0.049)
    assert store.get("k") is not None
    clock.advance(0.002)
    assert store.get("k") is None  # the entry lives on, but the listener may be behind
    store.fresh_until = clock.monotonic() + 0.05
    assert store.get("k") is not None


def test_hits_counts_only_hits_whatever_entries_were_let_in_with(clock: FakeClock,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setattr(l1_module, "AGE_EVERY", 2)  # halvings on the way, too
    store = LocalStore(3, clock)
    served = 0
    for round_ in range(30):
        for key in ("a", "b", "c", f"one-off{round_}"):
            if store.get(key) is not None:
                served += 1
            else:
                store.store_if_unchanged(key, 1, 60.0, store.seq)
        if round_ % 7 == 0:
            store.invalidate("a")
    assert served > 0
    assert store.hits() == served


def test_a_stale_window_keeps_an_entry_for_stale_reads_only(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("k", "v", 5.0, store.seq, stale_for=10.0)
    assert store.stale("k") is None  # fresh: a hit, not a stale read
    clock.advance(5.0)
    assert store.get("k") is None  # past its fresh time: no hit
    entry = store.stale("k")
    assert entry is not None and entry[0] == "v"
    store.lease(clock.monotonic())  # the listener is behind: no stale read either
    assert store.stale("k") is None
    store.lease(math.inf)
    clock.advance(10.0)
    assert store.stale("k") is None  # past the window


def test_an_entry_in_its_stale_window_is_not_evicted_as_dead(clock: FakeClock) -> None:
    store = LocalStore(1, clock)
    store.put("k", "v", 1.0, store.seq, stale_for=60.0)
    clock.advance(2.0)
    assert store.put("other", 1, 60.0, store.seq) is False  # k is stale, not dead
    assert store.stale("k") is not None
    clock.advance(60.0)
    assert store.put("other", 1, 60.0, store.seq) is True  # now it is


def test_a_bus_gap_keeps_stale_window_entries_for_fail_safe_only(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("plain", 1, 60.0, store.seq)
    store.put("windowed", 2, 60.0, store.seq, stale_for=60.0)
    store.lease(clock.monotonic() + 1.0)  # the bus is up
    store.clear(gap=True)  # ... and goes down: notices may be lost from here on
    assert "plain" not in store.data
    assert store.get("windowed") is None  # no hit: it may have missed an invalidation
    assert store.stale("windowed") is None  # nor a stale read while the bus serves leases
    store.lease(math.inf)  # the listener is down (Redis unreachable)
    entry = store.stale("windowed")
    assert entry is not None and entry[0] == 2  # fail-safe
    store.lease(clock.monotonic() + 1.0)  # back up: L2 decides again
    assert store.stale("windowed") is None
    store.clear()  # a clear() from the fleet drops it for good
    assert len(store) == 0


# -- suspension (a gap on the bus, until the replay) ----------------------------------------


def suspended_store(clock: FakeClock) -> LocalStore:
    """a and b fresh for 60 s (b with a 30 s stale window), "gone" cached as NOT_FOUND;
    then suspended."""
    store = LocalStore(10, clock)
    store.put("a", 1, 60.0, store.seq)
    store.put("b", 2, 60.0, store.seq, stale_for=30.0)
    assert store.put_negative("gone", 60.0, store.seq)
    store.suspend()
    return store


def test_a_suspended_store_serves_nothing_and_drops_nothing(clock: FakeClock) -> None:
    store = suspended_store(clock)
    assert store.suspended
    assert store.get("a") is None and store.get("b") is None
    assert not store.is_negative("gone")
    assert len(store) == 2, "suspend dropped entries"
    # A fail-safe copy stays servable as stale (the bus is down), one without a window not.
    stale = store.stale("b")
    assert stale is not None and stale[0] == 2
    assert store.stale("a") is None


def test_resume_serves_what_was_held_with_its_own_times(clock: FakeClock) -> None:
    store = suspended_store(clock)
    clock.advance(10.0)
    store.resume()
    assert not store.suspended
    assert value_of(store, "a") == 1 and value_of(store, "b") == 2
    assert store.is_negative("gone")
    clock.advance(50.0)  # 60 s after the put, not after the resume
    assert store.get("a") is None


def test_what_a_replay_touched_is_not_brought_back(clock: FakeClock) -> None:
    store = suspended_store(clock)
    store.invalidate("a")  # a replayed notice
    store.put("b", "new", 60.0, store.seq)  # read again from L2 during the gap
    store.invalidate("gone")  # now exists
    store.resume()
    assert store.get("a") is None
    assert value_of(store, "b") == "new"
    assert not store.is_negative("gone")


def test_suspend_is_idempotent_and_keeps_the_first_times(clock: FakeClock) -> None:
    store = suspended_store(clock)
    store.suspend()  # a second gap signal before the replay: nothing more to hold
    store.resume()
    assert value_of(store, "a") == 1
    assert store.is_negative("gone")
    store.resume()  # nothing held: a no-op
    assert value_of(store, "a") == 1


def test_clear_ends_a_suspension_for_good(clock: FakeClock) -> None:
    store = suspended_store(clock)
    store.clear()
    assert not store.suspended
    store.resume()
    assert store.get("a") is None and store.get("b") is None and len(store) == 0
    assert not store.is_negative("gone")


def test_a_held_entry_is_not_mistaken_for_a_dead_one_by_eviction(clock: FakeClock) -> None:
    store = LocalStore(2, clock)
    store.put("hot", 1, 60.0, store.seq)
    for _ in range(5):
        assert store.get("hot") is not None
    store.put("cold", 2, 60.0, store.seq)
    store.suspend()
    # A newcomer during the gap: the hot entry's times read -inf, yet it is not dead.
    for _ in range(3):
        store.put("new", 3, 60.0, store.seq)
    store.resume()
    assert value_of(store, "hot") == 1


# -- tags and prefixes --------------------------------------------------------------------


def test_invalidate_tag_drops_values_and_not_found_answers_carrying_it(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("a", 1, 60.0, store.seq, tags=("t", "u"))
    assert store.store_if_unchanged("b", 2, 60.0, store.seq, tags=("t",))
    store.put("c", 3, 60.0, store.seq, tags=("u",))
    assert store.put_negative("gone", 60.0, store.seq, ("t",))
    store.put("plain", 4, 60.0, store.seq)
    assert sorted(store.invalidate_tag("t")) == ["a", "b", "gone"]
    assert store.get("a") is None and store.get("b") is None
    assert not store.is_negative("gone")
    assert value_of(store, "c") == 3 and value_of(store, "plain") == 4
    assert store.invalidate_tag("t") == []
    assert store.invalidate_tag("u") == ["c"]


def test_a_rewrite_replaces_the_tags_of_a_key(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    store.put("k", 1, 60.0, store.seq, tags=("old",))
    store.put("k", 2, 60.0, store.seq, tags=("new",))
    assert store.invalidate_tag("old") == []
    assert value_of(store, "k") == 2
    store.put("k", 3, 60.0, store.seq)  # untagged now
    assert store.invalidate_tag("new") == []
    assert value_of(store, "k") == 3


def test_the_tag_index_forgets_what_leaves_l1(clock: FakeClock) -> None:
    """Evicted, invalidated, flushed or overflowing NOT_FOUND answers take their tags with
    them: the index never outgrows L1."""
    store = LocalStore(2, clock)
    for i in range(50):
        store.put(f"k{i}", i, 60.0, store.seq, tags=(f"t{i}",))
        store.put_negative(f"n{i}", 60.0, store.seq, (f"m{i}",))
    store.invalidate("k49")
    held = {*store.data, *store.negative}
    assert set(store._key_tags) == held and len(held) <= 4
    assert set(store._tagged) == {tag for key in held for tag in store._key_tags[key]}
    store.clear()
    assert store._key_tags == {} and store._tagged == {}


def test_invalidate_tag_voids_promotions_in_flight(clock: FakeClock) -> None:
    """A read noted before the notice may be of a tagged value L1 does not hold yet."""
    store = LocalStore(10, clock)
    seq = store.seq
    store.invalidate_tag("t")
    assert not store.store_if_unchanged("k", "old", 60.0, seq, tags=("t",))
    assert store.store_if_unchanged("k", "new", 60.0, store.seq, tags=("t",))


def test_invalidate_prefix_drops_the_keys_starting_with_it(clock: FakeClock) -> None:
    store = LocalStore(10, clock)
    for key in ("user:1:a", "user:1:b", "user:10", "user:2"):
        store.put(key, key, 60.0, store.seq)
    assert store.put_negative("user:1:none", 60.0, store.seq)
    seq = store.seq
    assert sorted(store.invalidate_prefix("user:1:")) == ["user:1:a", "user:1:b", "user:1:none"]
    assert value_of(store, "user:10") == "user:10" and value_of(store, "user:2") == "user:2"
    assert not store.is_negative("user:1:none")
    assert not store.store_if_unchanged("user:1:a", "old", 60.0, seq)


# -- update notices (sync_strategy="update") ----------------------------------------------


def versioned_store(clock: FakeClock) -> LocalStore:
    return LocalStore(10, clock, versioned=True)


def test_an_update_replaces_an_older_entry_in_place(clock: FakeClock) -> None:
    store = versioned_store(clock)
    store.put("k", "v1", 60.0, store.seq, version=10)
    for _ in range(3):
        store.get("k")
    assert store.update("k", "v2", 30.0, 11)
    assert value_of(store, "k") == "v2"
    assert store.data["k"][2] >= 3, "the entry lost its popularity"
    clock.advance(31.0)
    assert store.get("k") is None  # the update's own TTL


def test_an_update_older_than_the_entry_is_ignored(clock: FakeClock) -> None:
    """Our own racing write (version 12) landed after the notice's (11) was sent."""
    store = versioned_store(clock)
    store.put("k", "mine", 60.0, store.seq, version=12)
    assert not store.update("k", "theirs", 60.0, 11)
    assert not store.update("k", "same", 60.0, 12)
    assert value_of(store, "k") == "mine"


def test_an_update_of_an_unknown_version_or_key_is_an_invalidation(clock: FakeClock) -> None:
    store = versioned_store(clock)
    store.put("unversioned", "old", 60.0, store.seq)  # e.g. read through a fill path
    assert not store.update("unversioned", "new", 60.0, 5)
    assert store.get("unversioned") is None
    assert not store.update("absent", "new", 60.0, 5)
    assert "absent" not in store.data, "an update must not add keys this process never read"
    assert store.put_negative("gone", 60.0, store.seq)
    assert not store.update("gone", "exists now", 60.0, 5)
    assert not store.is_negative("gone")


def test_an_update_voids_reads_in_flight(clock: FakeClock) -> None:
    store = versioned_store(clock)
    store.put("k", "v1", 60.0, store.seq, version=10)
    seq = store.seq
    assert store.update("k", "v2", 60.0, 11)
    assert not store.store_if_unchanged("k", "v1", 60.0, seq, version=10)
    assert value_of(store, "k") == "v2"


def test_versions_go_with_their_entries(clock: FakeClock) -> None:
    store = versioned_store(clock)
    store.put("k", "v1", 60.0, store.seq, version=10)
    store.invalidate("k")
    assert store.store_if_unchanged("k", "v0", 60.0, store.seq)  # no version known
    assert not store.update("k", "v2", 60.0, 11)  # so an update cannot trust it
    assert store.get("k") is None
    store.put("k", "v3", 60.0, store.seq, version=20)
    store.clear(gap=True)
    assert store._versions == {}


def test_a_batch_fills_free_slots_strongest_first(clock: FakeClock) -> None:
    store = LocalStore(capacity=2, clock=clock)
    for _ in range(3):
        store._count_miss("popular")  # asked for before, never let in
    items = [("a", 1, 60.0, ()), ("b", 2, 60.0, ()), ("popular", 3, 60.0, ())]
    assert store.store_many_if_unchanged(items, store.seq) == 2
    assert value_of(store, "popular") == 3 and value_of(store, "a") == 1
    assert store.get("b") is None  # a tie with "a" goes to the batch's order


def test_a_weak_batch_into_a_full_l1_costs_one_contest_and_evicts_nothing(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    counters = Counters()
    store = LocalStore(capacity=3, clock=clock, counters=counters)
    fill(store, "a", "b", "c", hits=2)
    contests: list[int] = []
    evict_for = LocalStore._evict_for
    monkeypatch.setattr(LocalStore, "_evict_for", lambda self, wanted: contests.append(wanted)
                        or evict_for(self, wanted))
    items = [(f"cold{i}", i, 60.0, ()) for i in range(20)]  # 20 < the 30 misses that age
    assert store.store_many_if_unchanged(items, store.seq) == 0
    assert contests == [1]  # the strongest lost: the weaker rest are refused unsampled
    assert counters.l1_rejections == 20 and counters.l1_evictions == 0
    assert sorted(store.data) == ["a", "b", "c"]


def test_a_strong_newcomer_in_a_batch_evicts_the_weakest(clock: FakeClock) -> None:
    counters = Counters()
    store = LocalStore(capacity=3, clock=clock, counters=counters)
    fill(store, "a", "b", hits=3)
    fill(store, "c")
    for _ in range(4):
        store._count_miss("d")
    items = [("x", 0, 60.0, ()), ("d", 4, 60.0, ()), ("a", "A2", 60.0, ())]
    assert store.store_many_if_unchanged(items, store.seq) == 2  # d let in, a replaced
    assert store.get("c") is None and store.get("x") is None
    assert value_of(store, "d") == 4 and value_of(store, "a") == "A2"
    assert counters.l1_evictions == 1 and counters.l1_rejections == 1
