"""FrequencySketch: the count-min estimates L1's admission rests on."""

from __future__ import annotations

from fleetcache.core.sketch import MIN_SLOTS, FrequencySketch


def estimate(sketch: FrequencySketch, key: str) -> int:
    return sketch.add(key, 0)  # adding nothing: the current estimate, counters unchanged


class Slotted(str):
    """A key whose two counters the test picks (the sketch takes them from its hash)."""

    slots: tuple[int, int] = (0, 0)

    def __hash__(self) -> int:
        a, b = self.slots
        return (b << 32) | a


def slotted(name: str, a: int, b: int) -> Slotted:
    key = Slotted(name)
    key.slots = (a, b)
    return key


def test_counts_what_it_is_told_and_never_under_counts() -> None:
    sketch = FrequencySketch(300)  # 4,800 counters, rounded up to 8,192
    for i in range(300):
        for _ in range(i % 7):
            sketch.add(f"k{i}")
    assert all(estimate(sketch, f"k{i}") >= i % 7 for i in range(300))
    exact = sum(estimate(sketch, f"k{i}") == i % 7 for i in range(300))
    # 8,192 counters for 300 keys: under 1% of keys share both their counters (hash seeds
    # vary per run); 10% would mean the slots are not independent.
    assert exact >= 270


def test_an_unseen_key_is_zero_and_add_returns_the_new_estimate() -> None:
    sketch = FrequencySketch(10)
    assert estimate(sketch, "never") == 0
    assert sketch.add("k") == 1
    assert sketch.add("k", 4) == 5
    assert sketch.add("k", 0) == 5


def test_counts_saturate_at_255() -> None:
    sketch = FrequencySketch(10)
    sketch.add("k", 250)
    assert sketch.add("k", 10) == 255
    assert estimate(sketch, "k") == 255


def test_halve_ages_every_count() -> None:
    sketch = FrequencySketch(10)
    sketch.add("a", 9)
    sketch.add("b", 1)
    sketch.halve()
    assert estimate(sketch, "a") == 4
    assert estimate(sketch, "b") == 0


def test_conservative_update_leaves_a_colliding_hot_key_alone() -> None:
    sketch = FrequencySketch(1)  # 4,096 counters: with 20,000 keys, collisions are certain
    sketch.add("hot", 100)
    for i in range(20_000):
        sketch.add(f"cold{i}")
    assert estimate(sketch, "hot") >= 100
    cold = [estimate(sketch, f"cold{i}") for i in range(20_000)]
    # Each counter is shared by ~10 cold keys, yet only the smaller of a key's two grows:
    # the typical cold estimate stays far below the hot one.
    assert sorted(cold)[len(cold) // 2] < 50


def test_only_the_smaller_counter_grows() -> None:
    """Conservative update: counting a key leaves a shared counter that is already higher
    than the key's estimate alone, so keys sharing it are not inflated."""
    sketch = FrequencySketch(1)
    assert MIN_SLOTS > 9
    sketch.add(slotted("hot", 1, 2), 5)  # counters 1 and 2 at 5
    sketch.add(slotted("warm", 9, 4), 7)  # counters 9 and 4 at 7
    cold = slotted("cold", 1, 3)  # shares counter 1 with hot
    for _ in range(3):
        sketch.add(cold)
    assert estimate(sketch, cold) == 3
    probe = slotted("probe", 1, 4)  # counter 1 (hot's 5, untouched) and 4 (warm's 7)
    assert estimate(sketch, probe) == 5  # a plain count-min would have raised 1 to 8: 7


def test_add_each_counts_like_add_one_at_a_time() -> None:
    one, batch = FrequencySketch(100), FrequencySketch(100)
    keys = [f"k{i % 37}" for i in range(500)] + [slotted("hot", 1, 2)] * 300
    expected = [one.add(key) for key in keys]
    assert batch.add_each(keys) == expected
    assert max(expected) == 255  # saturates as add does
    assert all(estimate(batch, key) == estimate(one, key) for key in set(keys))
