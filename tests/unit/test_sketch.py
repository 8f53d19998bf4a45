"""FrequencySketch: the count-min estimates L1's admission rests on."""

from __future__ import annotations

from fleetcache.core.sketch import FrequencySketch


def test_counts_what_it_is_told_and_never_under_counts() -> None:
    sketch = FrequencySketch(100)
    for i in range(300):
        for _ in range(i % 7):
            sketch.add(f"k{i}")
    assert all(sketch.estimate(f"k{i}") >= i % 7 for i in range(300))
    exact = sum(sketch.estimate(f"k{i}") == i % 7 for i in range(300))
    # 2,048 counters for 300 keys: ~3% of keys share both their counters (hash seeds vary
    # per run); 10% would mean the mixing is broken.
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
    sketch = FrequencySketch(1)  # 16 counters: collisions certain among 200 keys
    sketch.add("hot", 100)
    for i in range(200):
        sketch.add(f"cold{i}")
    assert sketch.estimate("hot") >= 100
    cold = [sketch.estimate(f"cold{i}") for i in range(200)]
    # Each cold key lands on counters the hot key or 12 others share, yet only the
    # smallest of its two grows: the typical cold estimate stays far below the hot one.
    assert sorted(cold)[len(cold) // 2] < 50
