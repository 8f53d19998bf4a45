"""FrequencySketch: the count-min estimates L1's admission rests on."""

from __future__ import annotations

from fleetcache.core.sketch import FrequencySketch


def test_counts_what_it_is_told_and_never_under_counts() -> None:
    sketch = FrequencySketch(300)  # 4,800 counters, rounded up to 8,192
    for i in range(300):
        for _ in range(i % 7):
            sketch.add(f"k{i}")
    assert all(sketch.estimate(f"k{i}") >= i % 7 for i in range(300))
    exact = sum(sketch.estimate(f"k{i}") == i % 7 for i in range(300))
    # 8,192 counters for 300 keys: under 1% of keys share both their counters (hash seeds
    # vary per run); 10% would mean the slots are not independent.
    assert exact >= 270


def test_an_unseen_key_is_zero_and_add_returns_the_new_estimate() -> None:
    sketch = FrequencySketch(10)
    assert sketch.estimate("never") == 0
    assert sketch.add("k") == 1
    assert sketch.add("k", 4) == 5
    assert sketch.add("k", 0) == 5


def test_counts_saturate_at_255() -> None:
    sketch = FrequencySketch(10)
    sketch.add("k", 250)
    assert sketch.add("k", 10) == 255
    assert sketch.estimate("k") == 255


def test_halve_ages_every_count() -> None:
    sketch = FrequencySketch(10)
    sketch.add("a", 9)
    sketch.add("b", 1)
    sketch.halve()
    assert sketch.estimate("a") == 4
    assert sketch.estimate("b") == 0


def test_conservative_update_leaves_a_colliding_hot_key_alone() -> None:
    sketch = FrequencySketch(1)  # 4,096 counters: with 20,000 keys, collisions are certain
    sketch.add("hot", 100)
    for i in range(20_000):
        sketch.add(f"cold{i}")
    assert sketch.estimate("hot") >= 100
    cold = [sketch.estimate(f"cold{i}") for i in range(20_000)]
    # Each counter is shared by ~10 cold keys, yet only the smaller of a key's two grows:
    # the typical cold estimate stays far below the hot one.
    assert sorted(cold)[len(cold) // 2] < 50
