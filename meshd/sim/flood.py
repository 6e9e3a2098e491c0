"""The baseline: the reference SDK's controlled flood, behind MeshCore's adapter methods.

Parameters are those of the reference (../shared/REFERENCE.md): no routes; every frame is
flooded with TTL 8 (5 when the sender has >= 6 neighbours, received TTL capped at 16),
to 3 random neighbours, each relay waiting 20-200 ms of jitter; a seen-cache of 8192 ids
kept 600 s stops loops; relays forward <= 10 frames/s (burst 30) and take <= 5/s from one
neighbour; below 15 % battery a node stops relaying, between 15 and 30 % it relays with
longer delays, smaller fan-out and rate. The destination deduplicates (1000 ids / 1 h)
and floods a signed end-to-end ACK back the same way. The sender waits 10 s for it, then
retries with backoff 1 s x2 capped at 300 s, 10 retries, within a 7-day lifetime.

Two choices the reference leaves open, made in the baseline's favour: a node that has the
destination as a neighbour sends to it alone (no blind fan-out), and a retransmission
carries a new ``attempt`` number so that relays do not drop it as already seen.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.crypto.identity import (
    KEY_LEN,
    SIGNATURE_LEN,
    Identity,
    PublicIdentity,
    verify_signature,
)
from meshd.errors import FrameDecodeError
from meshd.router.events import (
    CoreEvent,
    DeliveryState,
    DeliveryStateChanged,
    FrameRejected,
    LinkId,
    MessageReceived,
    NeighbourDown,
    NeighbourUp,
)
from meshd.router.frames import FRAME_ID_LEN, Frame, FrameFlags, FrameType, decode_frame
from meshd.router.types import LinkInfo

_ACK_CONTEXT = b"meshd-sim-flood-ack-v1"
_ACK_BODY_LEN = FRAME_ID_LEN + KEY_LEN + SIGNATURE_LEN


@dataclass(frozen=True, slots=True)
class FloodConfig:
    """The reference SDK's numbers; see the module docstring."""

    max_ttl: int = 8
    dense_ttl: int = 5
    dense_degree: int = 6
    ttl_cap: int = 16
    fanout: int = 3
    jitter_min: float = 0.020
    jitter_max: float = 0.200
    seen_capacity: int = 8192
    seen_ttl: float = 600.0
    relay_rate: float = 10.0
    relay_burst: float = 30.0
    neighbour_rate: float = 5.0
    dedup_capacity: int = 1000
    dedup_ttl: float = 3600.0
    ack_timeout: float = 10.0
    max_retries: int = 10
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    lifetime: float = 7 * 24 * 3600.0
    outbox_limit: int = 500
    battery_no_relay: int = 15
    battery_soft: int = 30


class _Bucket:
    """Token bucket (rate per second, burst)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float, rate_scale: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate * rate_scale)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Pending:
    message_id: bytes
    dst: NodeAddress
    payload: bytes
    expires_at: float
    attempt: int = 0
    due: float = 0.0


class _Seen:
    """Ids seen recently, bounded in count and age (oldest evicted first)."""

    __slots__ = ("_capacity", "_ids", "_ttl")

    def __init__(self, capacity: int, ttl: float) -> None:
        self._ids: OrderedDict[bytes, float] = OrderedDict()
        self._capacity, self._ttl = capacity, ttl

    def check_and_add(self, key: bytes, now: float) -> bool:
        """True when ``key`` was already seen within the window; records it either way."""
        ids = self._ids
        while ids:
            oldest_key, t = next(iter(ids.items()))
            if now - t < self._ttl and len(ids) < self._capacity:
                break
            del ids[oldest_key]
        seen = key in ids
        if not seen:
            ids[key] = now
        return seen

    def __len__(self) -> int:
        return len(self._ids)


class FloodCore:
    """One node of the controlled-flood baseline (same adapter contract as MeshCore)."""

    def __init__(self, identity: Identity, *, now: float, rng: random.Random,
                 config: FloodConfig | None = None) -> None:
        self._id = identity
        self._addr = identity.address
        self._rng = rng
        self._cfg = config or FloodConfig()
        self._links: dict[LinkId, NodeAddress] = {}
        self._link_of: dict[NodeAddress, LinkId] = {}
        self._seen = _Seen(self._cfg.seen_capacity, self._cfg.seen_ttl)
        self._delivered = _Seen(self._cfg.dedup_capacity, self._cfg.dedup_ttl)
        self._relay_bucket = _Bucket(self._cfg.relay_rate, self._cfg.relay_burst, now)
        self._nbr_bucket: dict[LinkId, _Bucket] = {}
        self._battery = 100
        self._outbox: dict[bytes, _Pending] = {}
        # (due, seq, frame, from_link) relays waiting out their jitter; (due, seq, id) retries
        self._relays: list[tuple[float, int, Frame, LinkId]] = []
        self._retries: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._out: list[tuple[LinkId, bytes]] = []
        self._events: deque[CoreEvent] = deque()
        self.dropped: dict[str, int] = {}

    # --- inputs -----------------------------------------------------------------
    def link_up(self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *,
                now: float) -> None:
        self._links[link_id] = peer.address
        self._link_of[peer.address] = link_id
        self._nbr_bucket[link_id] = _Bucket(self._cfg.neighbour_rate,
                                            self._cfg.neighbour_rate, now)
        self._events.append(NeighbourUp(link_id, peer.address))

    def link_changed(self, link_id: LinkId, info: LinkInfo, *, now: float) -> None:
        """Link metrics do not matter to a flood."""

    def link_down(self, link_id: LinkId, *, now: float) -> None:
        peer = self._links.pop(link_id, None)
        self._nbr_bucket.pop(link_id, None)
        if peer is not None:
            if self._link_of.get(peer) == link_id:
                del self._link_of[peer]
            self._events.append(NeighbourDown(link_id, peer))

    def set_battery(self, level: int, *, charging: bool, now: float) -> None:
        self._battery = 100 if charging else max(0, min(100, level))

    def send(self, dst: NodeAddress, payload: bytes, *, now: float,
             lifetime: float | None = None, message_id: bytes | None = None) -> bytes:
        mid = message_id if message_id is not None else self._rng.randbytes(FRAME_ID_LEN)
        if len(self._outbox) >= self._cfg.outbox_limit:
            self._events.append(DeliveryStateChanged(mid, dst, DeliveryState.FAILED,
                                                     reason="outbox full"))
            return mid
        life = self._cfg.lifetime if lifetime is None else lifetime
        pending = _Pending(mid, dst, payload, expires_at=now + life)
        self._outbox[mid] = pending
        self._events.append(DeliveryStateChanged(mid, dst, DeliveryState.QUEUED))
        self._transmit_attempt(pending, now)
        return mid

    def receive(self, link_id: LinkId, data: bytes, *, now: float) -> None:
        try:
            frame = decode_frame(data)
        except FrameDecodeError as exc:
            self._events.append(FrameRejected(link_id, f"malformed: {exc}"))
            return
        if frame.ttl > self._cfg.ttl_cap or link_id not in self._links:
            self._events.append(FrameRejected(link_id, "ttl above cap or unknown link"))
            return
        if self._seen.check_and_add(_seen_key(frame), now):
            self._drop("duplicate")
            return
        if frame.dst == self._addr:
            if frame.type is FrameType.DATA:
                self._on_data(frame, now)
            elif frame.type is FrameType.ACK:
                self._on_ack(link_id, frame)
            return
        self._consider_relay(link_id, frame, now)

    def handle_timer(self, *, now: float) -> None:
        while self._relays and self._relays[0][0] <= now:
            _, _, frame, from_link = heapq.heappop(self._relays)
            self._forward(frame, exclude=from_link, src=frame.src)
        while self._retries and self._retries[0][0] <= now:
            _, _, mid = heapq.heappop(self._retries)
            pending = self._outbox.get(mid)
            if pending is None or pending.due > now:
                continue  # delivered meanwhile, or a stale entry
            if now >= pending.expires_at:
                self._fail(pending, "lifetime expired")
            elif pending.attempt >= self._cfg.max_retries:
                self._fail(pending, f"no ack after {pending.attempt} retries")
            else:
                pending.attempt += 1
                self._transmit_attempt(pending, now)

    # --- outputs ----------------------------------------------------------------
    def frames_to_send(self) -> list[tuple[LinkId, bytes]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> CoreEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        best: float | None = None
        if self._relays:
            best = self._relays[0][0]
        if self._retries and (best is None or self._retries[0][0] < best):
            best = self._retries[0][0]
        return best

    @property
    def address(self) -> NodeAddress:
        return self._addr

    # --- internals --------------------------------------------------------------
    def _ttl(self) -> int:
        dense = len(self._links) >= self._cfg.dense_degree
        return self._cfg.dense_ttl if dense else self._cfg.max_ttl

    def _transmit_attempt(self, pending: _Pending, now: float) -> None:
        frame = Frame(FrameType.DATA, pending.message_id, self._addr, pending.dst,
                      body=pending.payload, flags=FrameFlags.ACK_REQUESTED | FrameFlags.FLOOD,
                      ttl=self._ttl(), attempt=pending.attempt)
        self._seen.check_and_add(_seen_key(frame), now)  # drop our own echo
        if self._forward(frame, exclude=None, src=self._addr):
            self._events.append(DeliveryStateChanged(pending.message_id, pending.dst,
                                                     DeliveryState.SENT))
        # Wait ack_timeout for the ACK; retry n goes out backoff(n) after that timeout.
        backoff = min(self._cfg.backoff_cap, self._cfg.backoff_base * 2 ** pending.attempt)
        wait = self._cfg.ack_timeout
        if pending.attempt < self._cfg.max_retries:
            wait += backoff
        pending.due = min(now + wait, pending.expires_at)
        self._seq += 1
        heapq.heappush(self._retries, (pending.due, self._seq, pending.message_id))

    def _on_data(self, frame: Frame, now: float) -> None:
        key = frame.src.raw + frame.frame_id
        if not self._delivered.check_and_add(key, now):
            self._events.append(MessageReceived(frame.src, frame.frame_id, frame.body,
                                                frame.hops + 1))
        # ACK every copy (a lost ACK must be re-sent when the sender retries); own ACKs
        # are never throttled.
        signed = _ACK_CONTEXT + frame.frame_id + frame.src.raw + self._addr.raw
        body = frame.frame_id + self._id.public.signing_key + self._id.sign(signed)
        ack = Frame(FrameType.ACK, self._rng.randbytes(FRAME_ID_LEN), self._addr, frame.src,
                    body=body, flags=FrameFlags.FLOOD, ttl=self._ttl())
        self._seen.check_and_add(_seen_key(ack), now)
        self._forward(ack, exclude=None, src=self._addr)

    def _on_ack(self, link_id: LinkId, frame: Frame) -> None:
        body = frame.body
        if len(body) != _ACK_BODY_LEN:
            self._events.append(FrameRejected(link_id, "ack body length"))
            return
        mid = body[:FRAME_ID_LEN]
        key = body[FRAME_ID_LEN : FRAME_ID_LEN + KEY_LEN]
        pending = self._outbox.get(mid)
        if pending is None:
            self._drop("late ack")
            return
        signed = _ACK_CONTEXT + mid + self._addr.raw + pending.dst.raw
        if (NodeAddress.from_public_key(key) != frame.src or frame.src != pending.dst
                or not verify_signature(key, body[FRAME_ID_LEN + KEY_LEN :], signed)):
            self._events.append(FrameRejected(link_id, "forged ack"))
            return
        del self._outbox[mid]
        self._events.append(DeliveryStateChanged(mid, pending.dst, DeliveryState.DELIVERED))

    def _consider_relay(self, link_id: LinkId, frame: Frame, now: float) -> None:
        if frame.ttl <= 1:
            self._drop("ttl")
            return
        battery = self._battery
        if battery < self._cfg.battery_no_relay:
            self._drop("battery")
            return
        # Between the floor and the soft floor, battery scales rate and delay down/up.
        scale = 1.0
        if battery < self._cfg.battery_soft:
            span = self._cfg.battery_soft - self._cfg.battery_no_relay
            scale = max(0.1, (battery - self._cfg.battery_no_relay) / span)
        bucket = self._nbr_bucket.get(link_id)
        if bucket is None or not bucket.take(now, scale):
            self._drop("neighbour rate")
            return
        if not self._relay_bucket.take(now, scale):
            self._drop("relay rate")
            return
        delay = self._rng.uniform(self._cfg.jitter_min, self._cfg.jitter_max) / scale
        self._seq += 1
        heapq.heappush(self._relays, (now + delay, self._seq, frame.hopped(), link_id))

    def _fanout(self) -> int:
        battery = self._battery
        if battery >= self._cfg.battery_soft:
            return self._cfg.fanout
        return max(1, self._cfg.fanout - 1)

    def _forward(self, frame: Frame, *, exclude: LinkId | None, src: NodeAddress) -> bool:
        """Send to the destination if it is a neighbour, else to ``fanout`` random ones."""
        direct = self._link_of.get(frame.dst)
        if direct is not None:
            targets = [direct]
        else:
            candidates = [lid for lid, peer in self._links.items()
                          if lid != exclude and peer != src]
            fanout = self._cfg.fanout if src == self._addr else self._fanout()
            if len(candidates) > fanout:
                candidates = self._rng.sample(candidates, fanout)
            targets = candidates
        if not targets:
            self._drop("no neighbour")
            return False
        data = frame.encode()
        self._out.extend((lid, data) for lid in targets)
        return True

    def _fail(self, pending: _Pending, reason: str) -> None:
        del self._outbox[pending.message_id]
        self._events.append(DeliveryStateChanged(pending.message_id, pending.dst,
                                                 DeliveryState.FAILED, reason=reason))

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def _seen_key(frame: Frame) -> bytes:
    return bytes((frame.type, frame.attempt)) + frame.frame_id + frame.src.raw
