"""Custody store: DATA frames a relay holds for others, within bounded bytes, count and time.

A custody receipt is a promise ("I hold it, stop retrying"), so a full store refuses new
frames instead of evicting held ones; only expired frames make room.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.router.backoff import DeadlineHeap
from meshd.router.e2e_bodies import DataBody, lifetime_left
from meshd.router.frames import HEADER_LEN, Frame, FrameFlags, FrameType

CustodyKey = tuple[NodeAddress, bytes]  # (original sender, message id): the dedup key


@dataclass(slots=True)
class HeldFrame:
    """One frame in custody, as it arrived (src and frame_id kept for end-to-end dedup)."""

    frame: Frame
    body: DataBody
    digest: bytes
    held_at: float
    hold_until: float  # min(message expiry, now + custody lifetime)
    message_expires_at: float
    handoffs: int = 0
    last_handoff_at: float | None = None
    route_failed: bool = False
    offer_id: bytes | None = None  # frame id of our last CUSTODY_OFFER carrying it
    in_router: bool = False  # originated, the router has not sent it on or given up

    @property
    def key(self) -> CustodyKey:
        return (self.frame.src, self.frame.frame_id)

    @property
    def size(self) -> int:
        return HEADER_LEN + len(self.frame.body)

    def handoff_frame(self, custodian: NodeAddress, *, now: float, ttl: int) -> Frame:
        """The frame re-originated by ``custodian``: same src and id (end-to-end dedup)."""
        original = self.frame
        left = lifetime_left(self.message_expires_at, now)
        return Frame(
            FrameType.DATA,
            original.frame_id,
            original.src,
            original.dst,
            DataBody(self.body.payload, left, custodian=custodian).encode(),
            original.flags | FrameFlags.CUSTODY_ALLOWED,
            ttl=ttl,
            # A new attempt number, so relays' (frame_id, attempt) dedup lets it through.
            attempt=(original.attempt + self.handoffs + 1) % 256,
        )


class CustodyStore:
    """Frames held for others, bounded by ``limit_bytes`` and ``limit_frames``."""

    def __init__(self, *, limit_bytes: int, limit_frames: int) -> None:
        self.limit_bytes = limit_bytes
        self.limit_frames = limit_frames
        self.bytes_used = 0
        self._held: dict[CustodyKey, HeldFrame] = {}
        self._by_dst: dict[NodeAddress, set[CustodyKey]] = {}
        self._by_id: dict[bytes, set[CustodyKey]] = {}
        self._by_offer: dict[bytes, CustodyKey] = {}  # id of the last offer sent per frame
        self._expiry: DeadlineHeap[CustodyKey] = DeadlineHeap()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: CustodyKey) -> bool:
        return key in self._held

    def __iter__(self) -> Iterator[HeldFrame]:
        return iter(self._held.values())

    def get(self, key: CustodyKey) -> HeldFrame | None:
        return self._held.get(key)

    def has_room(self, size: int) -> bool:
        return (
            len(self._held) < self.limit_frames and self.bytes_used + size <= self.limit_bytes
        )

    def add(self, held: HeldFrame) -> None:
        key = held.key
        self.remove(key)
        self._held[key] = held
        self._by_dst.setdefault(held.frame.dst, set()).add(key)
        self._by_id.setdefault(held.frame.frame_id, set()).add(key)
        self.bytes_used += held.size
        self._expiry.set(key, held.hold_until)

    def remove(self, key: CustodyKey) -> HeldFrame | None:
        held = self._held.pop(key, None)
        if held is None:
            return None
        self.bytes_used -= held.size
        self._expiry.cancel(key)
        keys = self._by_dst.get(held.frame.dst)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_dst[held.frame.dst]
        keys = self._by_id.get(held.frame.frame_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_id[held.frame.frame_id]
        if held.offer_id is not None:
            self._by_offer.pop(held.offer_id, None)
        return held

    def set_offer_id(self, key: CustodyKey, offer_id: bytes) -> None:
        held = self._held.get(key)
        if held is None:
            return
        if held.offer_id is not None:
            self._by_offer.pop(held.offer_id, None)
        held.offer_id = offer_id
        self._by_offer[offer_id] = key

    def for_dst(self, dst: NodeAddress) -> list[HeldFrame]:
        return [self._held[key] for key in self._by_dst.get(dst, ())]

    def with_id(self, frame_id: bytes) -> list[HeldFrame]:
        """Held frames with this message id, or offered last in a frame with this id."""
        found = [self._held[key] for key in self._by_id.get(frame_id, ())]
        key = self._by_offer.get(frame_id)
        if key is not None:
            found.append(self._held[key])
        return found

    def next_expiry(self) -> float | None:
        return self._expiry.peek()

    def expire(self, *, now: float) -> list[HeldFrame]:
        """Drop and return every frame whose hold time is over."""
        dropped = []
        while (key := self._expiry.pop_due(now)) is not None:
            held = self.remove(key)
            if held is not None:
                dropped.append(held)
        return dropped
