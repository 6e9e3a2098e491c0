"""Bookkeeping shared by the end-to-end roles: counters, and the destination's dedup."""

from __future__ import annotations

import math
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.router.backoff import DeadlineHeap

CustodyKey = tuple[NodeAddress, bytes]  # (original sender, message id): the dedup key


@dataclass(slots=True)
class EndpointStats:
    """Counters (rejections are reported here: the endpoint does not know the link)."""

    data_originated: int = 0
    retries: int = 0
    handoffs: int = 0
    delivered_to_app: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    acks_verified: int = 0
    acks_forged: int = 0
    acks_unknown: int = 0
    receipts_sent: int = 0
    receipts_forged: int = 0
    receipts_unknown: int = 0
    malformed: int = 0
    custody_taken: int = 0
    custody_refused: int = 0
    custody_expired: int = 0
    custody_released: int = 0
    seen_evicted: int = 0


@dataclass(slots=True)
class Delivered:
    digest: bytes
    ack_signature: bytes | None = None
    last_ack_at: float = -math.inf


class DeliveredSet:
    """Destination dedup: (src, message id) seen until the message's lifetime is over.

    Bounded: when full, the entry closest to expiry goes first (it is the least likely
    to see another copy). ``max_age`` caps what a sender can claim as lifetime.
    """

    def __init__(self, *, capacity: int, max_age: float) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self.evicted = 0
        self._entries: dict[CustodyKey, Delivered] = {}
        self._expiry: DeadlineHeap[CustodyKey] = DeadlineHeap()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CustodyKey) -> Delivered | None:
        return self._entries.get(key)

    def add(self, key: CustodyKey, digest: bytes, *, now: float, lifetime: float) -> Delivered:
        self.expire(now=now)
        while len(self._entries) >= self.capacity:
            oldest = self._expiry.pop_due(math.inf)
            if oldest is None:
                break
            del self._entries[oldest]
            self.evicted += 1
        entry = Delivered(digest)
        self._entries[key] = entry
        self._expiry.set(key, now + min(max(lifetime, 0.0), self.max_age))
        return entry

    def expire(self, *, now: float) -> None:
        while (key := self._expiry.pop_due(now)) is not None:
            self._entries.pop(key, None)
