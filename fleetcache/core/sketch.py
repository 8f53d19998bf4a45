"""How often each key was asked for lately: the memory L1's admission decisions rest on.

A count-min sketch (Cormode and Muthukrishnan, 2005) as TinyLFU uses it (Einziger, Friedman
and Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", 2017): one ``bytearray`` of
saturating 8-bit counters, two slots per key taken from the key's own ``hash()`` (cached on
a ``str``, so counting hashes nothing), and the estimate is the smaller of the two. Updates
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
MIN_SLOTS: Final = 4096  # 4 KiB: a small L1 still gets collision-free counts
_MAX: Final = 255
_HALF: Final = bytes(n >> 1 for n in range(256))


class FrequencySketch:
    """Approximate recent access counts for any number of keys, in fixed memory.

    Keys are ``str`` (what L1 holds): their ``hash()`` is SipHash, whose low and high 32
    bits are independent enough to serve as the two slots without mixing them again.
    """

    __slots__ = ("_counts", "_mask")

    def __init__(self, capacity: int) -> None:
        size = MIN_SLOTS
        while size < capacity * SLOTS_PER_ENTRY:
            size <<= 1
        self._counts = bytearray(size)
        self._mask = size - 1

    def add(self, key: str, n: int = 1) -> int:
        """Count ``key`` ``n`` more times (saturating at 255); its new estimate (``n=0``:
        just the estimate, an over-estimate at worst)."""
        h, mask, counts = hash(key), self._mask, self._counts
        a, b = h & mask, (h >> 32) & mask
        ca, cb = counts[a], counts[b]
        new = min(_MAX, (ca if ca < cb else cb) + n)
        if ca < new:
            counts[a] = new
        if cb < new:
            counts[b] = new
        return new

    def add_each(self, keys: list[str]) -> list[int]:
        """:meth:`add` once for each of ``keys``, in one call (a batch promotion's)."""
        mask, counts = self._mask, self._counts
        out = []
        for key in keys:
            h = hash(key)
            a, b = h & mask, (h >> 32) & mask
            ca, cb = counts[a], counts[b]
            low = ca if ca < cb else cb
            if low < _MAX:  # saturated: it stays there
                low += 1
                if ca < low:
                    counts[a] = low
                if cb < low:
                    counts[b] = low
            out.append(low)
        return out

    def raise_to(self, key: str, n: int) -> None:
        """Make ``key``'s estimate at least ``n`` (an entry leaving L1 hands back its count)."""
        h, mask, counts = hash(key), self._mask, self._counts
        n = min(_MAX, n)
        for slot in (h & mask, (h >> 32) & mask):
            counts[slot] = max(counts[slot], n)

    def halve(self) -> None:
        """Age every count by half (TinyLFU's reset), in one pass."""
        self._counts[:] = self._counts.translate(_HALF)
