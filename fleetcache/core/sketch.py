"""How often each key was asked for lately: the memory L1's admission decisions rest on.

A count-min sketch (Cormode and Muthukrishnan, 2005) as TinyLFU uses it (Einziger, Friedman
and Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", 2017): one ``bytearray`` of
saturating 8-bit counters, two slots per key taken from the key's own ``hash()`` (cached on
a ``str``, so a lookup hashes nothing), and the estimate is the smaller of the two. Updates
are conservative (only the counters at the minimum grow), which keeps collisions from
inflating cold keys. :meth:`halve` ages every counter at once (``bytes.translate``: one C
loop), so yesterday's popularity fades instead of pinning keys forever.

Sixteen counters per cached entry keep collisions rare for key spaces several times the
capacity (``benchmarks/hit_ratio.py`` compares the policy with exact counts). At the default
capacity of 2,000 entries that is 32 KiB.
"""

from __future__ import annotations

from typing import Final

SLOTS_PER_ENTRY: Final = 16
_MAX: Final = 255
_M64: Final = (1 << 64) - 1
# Two odd 64-bit multipliers (from splitmix64/xxhash): the high bits of hash * M are well
# mixed even for the small, sequential hashes of ints.
_MIX_A: Final = 0x9E3779B97F4A7C15
_MIX_B: Final = 0xC2B2AE3D27D4EB4F
_HALF: Final = bytes(n >> 1 for n in range(256))


class FrequencySketch:
    """Approximate recent access counts for any number of keys, in fixed memory."""

    __slots__ = ("_counts", "_mask")

    def __init__(self, capacity: int) -> None:
        size = 16
        while size < capacity * SLOTS_PER_ENTRY:
            size <<= 1
        self._counts = bytearray(size)
        self._mask = size - 1

    def _slots(self, key: str) -> tuple[int, int]:
        h = hash(key)
        mask = self._mask
        return ((h * _MIX_A) & _M64) >> 32 & mask, ((h * _MIX_B) & _M64) >> 32 & mask

    def estimate(self, key: str) -> int:
        """How often ``key`` was counted since the last halvings (an over-estimate at worst)."""
        a, b = self._slots(key)
        counts = self._counts
        return min(counts[a], counts[b])

    def add(self, key: str, n: int = 1) -> int:
        """Count ``key`` ``n`` more times (saturating at 255); its new estimate."""
        a, b = self._slots(key)
        counts = self._counts
        new = min(_MAX, min(counts[a], counts[b]) + n)
        counts[a] = max(counts[a], new)
        counts[b] = max(counts[b], new)
        return new

    def halve(self) -> None:
        """Age every count by half (TinyLFU's reset), in one pass."""
        self._counts[:] = self._counts.translate(_HALF)
