"""Custody: DATA frames a relay holds for others (bounded bytes, count and time), and the
custodian role that hands them on and confirms with signed receipts.

A custody receipt is a promise ("I hold it, stop retrying"), so a full store refuses new
frames instead of evicting held ones; only expired frames make room. The protocol is in
docs/wire-format.md, "Reliability and custody protocol".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.errors import FrameDecodeError
from meshd.router.backoff import (
    DeadlineHeap,
    ProbeGate,
    RetryPolicy,
    RttTable,
    backoff_delay,
    retry_at,
)
from meshd.router.e2e_bodies import (
    CustodyReceiptBody,
    DataBody,
    decode_data_body,
    lifetime_left,
    offer_frame,
    payload_digest,
    receipt_frame,
)
from meshd.router.e2e_common import CustodyKey, EndpointStats
from meshd.router.events import CoreEvent, CustodyReleased, CustodyTaken
from meshd.router.frames import FRAME_ID_LEN, HEADER_LEN, Frame, FrameFlags, FrameType

if TYPE_CHECKING:
    from meshd.router.core import CoreConfig

Emit = Callable[[Frame, float], None]
Notify = Callable[[CoreEvent], None]


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
            # Never FLOOD: a copy that arrived flooded is handed on as plain unicast.
            (original.flags & ~FrameFlags.FLOOD) | FrameFlags.CUSTODY_ALLOWED,
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


class Custodian:
    """The relay role of an Endpoint: hold, hand on, confirm, release."""

    def __init__(
        self,
        identity: Identity,
        *,
        rng: random.Random,
        config: CoreConfig,
        policy: RetryPolicy,
        rtt: RttTable,
        probes: ProbeGate,
        stats: EndpointStats,
        emit: Emit,
        notify: Notify | None = None,
    ) -> None:
        self._identity = identity
        # CustodyTaken/CustodyReleased go here (the daemon persists the held frames).
        self._notify = notify
        self._address = identity.address
        self._rng = rng
        self._config = config
        self._policy = policy
        self._rtt = rtt
        self._probes = probes
        self._stats = stats
        self._emit = emit
        self.store = CustodyStore(
            limit_bytes=config.custody_limit_bytes, limit_frames=config.custody_limit_frames
        )
        self._timers: DeadlineHeap[CustodyKey] = DeadlineHeap()  # next hand-off per frame

    def take(self, frame: Frame, body: DataBody, *, now: float) -> bool:
        """Hold ``frame`` (DATA from someone else, for someone else); False when refused."""
        previous = body.custodian if body.custodian is not None else frame.src
        key = (frame.src, frame.frame_id)
        held = self.store.get(key)
        if held is None:
            if body.lifetime_left <= 0:
                return False
            self.expire(now)
            message_expiry = now + body.lifetime_left
            hold_until = min(message_expiry, now + self._config.custody_lifetime)
            held = HeldFrame(frame, body, payload_digest(body.payload), now, hold_until,
                             message_expiry)
            if not self.store.has_room(held.size):
                self._stats.custody_refused += 1
                return False
            self.store.add(held)
            self._stats.custody_taken += 1
            if self._notify is not None:  # before the receipt below is queued
                self._notify(CustodyTaken(frame, hold_until))
            first = self._policy.custody_first_try * self._jitter()
            self._timers.set(key, now + first)
        if previous != self._address:  # a copy again: the first receipt may have been lost
            self.send_receipt(frame.frame_id, frame.src, frame.dst, held.digest, previous, now)
        return True

    def send_receipt(
        self,
        message_id: bytes,
        origin: NodeAddress,
        destination: NodeAddress,
        digest: bytes,
        to: NodeAddress,
        now: float,
    ) -> None:
        self._stats.receipts_sent += 1
        self._emit(receipt_frame(self._identity, self._rng.randbytes(FRAME_ID_LEN),
                                 message_id=message_id, origin=origin,
                                 destination=destination, digest=digest, to=to,
                                 ttl=self._config.default_ttl), now)

    def on_receipt(self, frame: Frame, body: CustodyReceiptBody, *, now: float) -> None:
        """The next holder (or the destination) confirms: release our copy."""
        key = (body.origin, body.message_id)
        held = self.store.get(key)
        if held is None:
            self._stats.receipts_unknown += 1
            return
        if not body.verify(signer=frame.src, destination=held.frame.dst, digest=held.digest):
            self._stats.receipts_forged += 1
            return
        self.store.remove(key)
        self._timers.cancel(key)
        self._stats.custody_released += 1
        if self._notify is not None:
            reason = "delivered" if frame.src == held.frame.dst else "handed_on"
            self._notify(CustodyReleased(key[0], key[1], reason))
        if frame.src == held.frame.dst:
            if held.last_handoff_at is not None:
                self._rtt.sample(held.frame.dst, now - held.last_handoff_at)
            # The destination's own receipt proves delivery: pass it on to the sender, who
            # may be back online (its ACK may have been lost while it was away).
            self._emit(Frame(FrameType.CUSTODY_RECEIPT, self._rng.randbytes(FRAME_ID_LEN),
                             self._address, body.origin, frame.body,
                             ttl=self._config.default_ttl), now)

    def transmitted(self, frame_id: bytes, *, now: float) -> None:
        """Our hand-off left on a link: its receipt clock starts now."""
        for held in self.store.with_id(frame_id):
            if held.handoffs and self._timers.due_at(held.key) is not None:
                held.last_handoff_at = now
                held.route_failed = False
                held.in_router = False
                self._timers.set(held.key, now + self._delay(held))

    def route_failed(self, frame_id: bytes) -> None:
        for held in self.store.with_id(frame_id):
            held.route_failed = True
            held.in_router = False

    def path_available(self, dst: NodeAddress, *, now: float) -> None:
        rto, wait = self._rtt.rto(dst), self._policy.unroutable_wait
        for held in self.store.for_dst(dst):
            when = retry_at(now, held.last_handoff_at, held.in_router, held.route_failed,
                            rto, wait)
            due = self._timers.due_at(held.key)
            if when is not None and (due is None or due > when):
                self._timers.set(held.key, when)

    def due(self, *, now: float, can_route: Callable[[NodeAddress], bool]) -> list[Frame]:
        """Hand-offs whose time has come."""
        frames = []
        while (key := self._timers.pop_due(now)) is not None:
            held = self.store.get(key)
            if held is not None:
                frame = self._hand_off(held, now, can_route)
                if frame is not None:
                    frames.append(frame)
        return frames

    def offers(self, to: NodeAddress, *, now: float, limit: int) -> list[Frame]:
        """Inner frames to offer to ``to`` (a better custodian appeared)."""
        inners: list[Frame] = []
        for held in self.store:
            if len(inners) >= limit:
                break
            if held.frame.src != to:
                inners.append(held.handoff_frame(self._address, now=now,
                                                 ttl=self._config.default_ttl))
                held.last_handoff_at = now
        return inners

    def expire(self, now: float) -> None:
        for held in self.store.expire(now=now):
            self._timers.cancel(held.key)
            self._stats.custody_expired += 1
            if self._notify is not None:
                self._notify(CustodyReleased(held.frame.src, held.frame.frame_id, "expired"))

    def next_deadline(self) -> float | None:
        timers, expiry = self._timers.peek(), self.store.next_expiry()
        if timers is None or (expiry is not None and expiry < timers):
            return expiry
        return timers

    def restore(self, frames: list[tuple[Frame, float]], *, now: float) -> None:
        """Reload persisted custody frames (``expires_at`` in this ``now``'s timebase)."""
        spread = min(self._policy.restore_spread, 0.01 * len(frames))
        for frame, expires_at in frames:
            if frame.type is not FrameType.DATA or expires_at <= now:
                continue
            try:
                body = decode_data_body(frame.body)
            except FrameDecodeError:
                self._stats.malformed += 1
                continue
            held = HeldFrame(frame, body, payload_digest(body.payload), now, expires_at,
                             expires_at)
            if held.key in self.store or not self.store.has_room(held.size):
                continue
            self.store.add(held)
            self._timers.set(held.key, now + self._rng.uniform(0.0, spread))

    def _hand_off(
        self, held: HeldFrame, now: float, can_route: Callable[[NodeAddress], bool]
    ) -> Frame | None:
        dst = held.frame.dst
        routable = can_route(dst)
        if not routable:
            if not self._probes.may_probe(dst, now):
                wake = self._probes.until(dst, now) + self._rng.uniform(0.0, 1.0)
                self._timers.set(held.key, wake)
                return None
            # Custodians probe rarely: they hold the frame because no route was known.
            self._probes.hold(dst, now + self._policy.probe_interval * self._jitter())
        frame = held.handoff_frame(self._address, now=now, ttl=self._config.default_ttl)
        if routable:
            # Wrapped, with us as header src: relays drop a frame bearing their own address
            # as src, and the original sender may well sit on our path to the destination.
            # A bare DATA copy (unroutable case) is only the probe that makes the router
            # discover a path.
            frame = offer_frame(self._rng.randbytes(FRAME_ID_LEN), src=self._address, to=dst,
                                inner=frame, ttl=self._config.default_ttl)
            self.store.set_offer_id(held.key, frame.frame_id)
        held.handoffs += 1
        held.last_handoff_at = now
        held.route_failed = False
        held.in_router = True
        self._stats.handoffs += 1
        self._timers.set(held.key, now + self._delay(held))
        return frame

    def _delay(self, held: HeldFrame) -> float:
        return backoff_delay(self._rtt.rto(held.frame.dst), held.handoffs - 1, self._policy,
                             self._rng)

    def _jitter(self) -> float:
        j = self._policy.jitter
        return self._rng.uniform(1.0 - j, 1.0 + j)
