"""Bounded seen-set: remembers keys for at most ``max_age`` seconds and ``capacity`` entries."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class SeenSet:
    """Insertion-ordered, so expiry and eviction pop from the front in O(1) amortised."""

    __slots__ = ("_entries", "capacity", "max_age")

    def __init__(self, *, capacity: int = 8192, max_age: float = 600.0) -> None:
        # 8192 ids / 600 s is the reference SDK's seen-cache (REFERENCE.md); what matters
        # is that memory is bounded whatever a neighbour sends.
        self.capacity = capacity
        self.max_age = max_age
        self._entries: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def add(self, key: Hashable, *, now: float) -> bool:
        """Record ``key``; True when it was new (not seen within the window)."""
        self.expire(now=now)
        if key in self._entries:
            return False
        self._entries[key] = now
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return True

    def expire(self, *, now: float) -> None:
        entries = self._entries
        limit = now - self.max_age
        while entries:
            seen_at = next(iter(entries.values()))
            if seen_at > limit:
                break
            entries.popitem(last=False)
