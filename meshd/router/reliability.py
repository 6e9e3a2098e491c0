"""End-to-end layer of the mesh core: outbox, signed ACKs, retries, dedup, custody.

Sans-IO: ``MeshCore`` feeds an ``Endpoint`` the frames addressed to this node and the
router's verdicts on frames it originated, and drains frames to originate (``poll``) and
app events (``next_event``). The design (custody hand-off, receipts, what is signed) is
written down in docs/wire-format.md, section "End-to-end bodies".
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import AlreadyExists, FrameDecodeError, InvalidArgument, ResourceExhausted
from meshd.router.acks import AckQueue, single_ack
from meshd.router.backoff import (
    DeadlineHeap,
    ProbeGate,
    RetryPolicy,
    RttTable,
    backoff_delay,
    retry_at,
)
from meshd.router.custody import Custodian
from meshd.router.e2e_acks import SIGNER_CACHE_SIZE, AckHandling
from meshd.router.e2e_bodies import (
    MAX_LIFETIME_WIRE,
    MAX_PAYLOAD_LEN,
    CustodyReceiptBody,
    DataBody,
    decode_data_body,
    decode_offer_body,
    decode_receipt_body,
    lifetime_left,
    offer_frame,
    payload_digest,
)
from meshd.router.e2e_common import Delivered, DeliveredSet, EndpointStats
from meshd.router.events import (
    CoreEvent,
    DeliveryState,
    DeliveryStateChanged,
    MessageReceived,
)
from meshd.router.frames import FRAME_ID_LEN, Frame, FrameFlags, FrameType
from meshd.router.outbox import STATE_RANK, Outbox, OutgoingMessage
from meshd.router.types import OutboxEntry

if TYPE_CHECKING:
    from meshd.router.core import CoreConfig

__all__ = ["DATA_FLAGS", "SIGNER_CACHE_SIZE", "Endpoint"]  # SIGNER_CACHE_SIZE: re-export

DATA_FLAGS = FrameFlags.ACK_REQUESTED | FrameFlags.CUSTODY_ALLOWED


class Endpoint(AckHandling):
    """One node's end-to-end reliability: sender, destination and custodian roles."""

    def __init__(
        self,
        identity: Identity,
        *,
        rng: random.Random,
        config: CoreConfig,
        policy: RetryPolicy | None = None,
        batch_acks: bool = False,
    ) -> None:
        self._identity = identity
        # batch_acks: ACKs wait for flush_acks() (MeshCore calls it when the node drains)
        # and one signed ACK covers a sender's messages of that drain (meshd/router/acks.py).
        self._acks = AckQueue(identity, rng) if batch_acks else None
        self._address = identity.address
        self._rng = rng
        self._config = config
        self._policy = policy if policy is not None else RetryPolicy()
        self._outbox = Outbox(config.outbox_limit)
        self._seen = DeliveredSet(
            capacity=self._policy.seen_capacity, max_age=config.message_lifetime
        )
        self._rtt = RttTable(self._policy)
        self._retry: DeadlineHeap[bytes] = DeadlineHeap()  # own messages: next transmission
        self._expiry: DeadlineHeap[bytes] = DeadlineHeap()  # own messages: end of lifetime
        self._probes = ProbeGate()
        self._ready: list[Frame] = []
        self._ready_since: float | None = None
        self._events: deque[CoreEvent] = deque()
        self._signer_addresses: dict[bytes, NodeAddress] = {}
        self.stats = EndpointStats()
        self._custodian = Custodian(
            identity, rng=rng, config=config, policy=self._policy, rtt=self._rtt,
            probes=self._probes, stats=self.stats, emit=self._queue,
            notify=self._events.append,
        )

    @property
    def address(self) -> NodeAddress:
        return self._address

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @property
    def dedup_size(self) -> int:
        """How many (src, message id) pairs the destination dedup remembers now."""
        return len(self._seen)

    # --- sender -----------------------------------------------------------------
    def send(
        self,
        dst: NodeAddress,
        payload: bytes,
        *,
        now: float,
        lifetime: float | None = None,
        message_id: bytes | None = None,
    ) -> bytes:
        """Queue a reliable message for ``dst``; returns its 8-byte message id."""
        if dst == self._address or dst.is_broadcast:
            raise InvalidArgument("destination must be another node's address", field="dst")
        if len(payload) > MAX_PAYLOAD_LEN:
            raise InvalidArgument(
                f"payload is {len(payload)} bytes, at most {MAX_PAYLOAD_LEN}", field="payload"
            )
        if lifetime is None:
            lifetime = self._config.message_lifetime
        if not (math.isfinite(lifetime) and 0 < lifetime <= MAX_LIFETIME_WIRE):
            raise InvalidArgument("lifetime must be > 0 seconds and finite", field="lifetime")
        if message_id is None:
            message_id = self._rng.randbytes(FRAME_ID_LEN)
            while message_id in self._outbox:
                message_id = self._rng.randbytes(FRAME_ID_LEN)
        elif len(message_id) != FRAME_ID_LEN:
            raise InvalidArgument(f"message_id must be {FRAME_ID_LEN} bytes", field="message_id")
        elif message_id in self._outbox:
            raise AlreadyExists("a message with this id is pending", field="message_id")
        if self._outbox.full:
            raise ResourceExhausted(
                f"outbox holds {self._outbox.limit} messages already", field="outbox"
            )
        message = OutgoingMessage(
            message_id=message_id,
            dst=dst,
            payload=payload,
            digest=payload_digest(payload),
            created_at=now,
            expires_at=now + lifetime,
            state=DeliveryState.QUEUED,
        )
        self._outbox.add(message)
        self._retry.set(message_id, now)
        self._expiry.set(message_id, message.expires_at)
        self._emit_state(message)
        return message_id

    def restore(self, entries: list[OutboxEntry], *, now: float) -> None:
        """Reload persisted outbox entries; pending ones are retried soon, spread out."""
        spread = min(self._policy.restore_spread, 0.01 * len(entries))
        for entry in entries:
            if len(entry.message_id) != FRAME_ID_LEN:
                raise InvalidArgument("message_id must be 8 bytes", field="message_id")
            if entry.state.is_final or entry.message_id in self._outbox:
                continue
            message = OutgoingMessage(
                message_id=entry.message_id,
                dst=entry.dst,
                payload=entry.payload,
                digest=payload_digest(entry.payload),
                created_at=entry.created_at,
                expires_at=entry.expires_at,
                state=entry.state,
                attempts=entry.attempts,
            )
            if entry.expires_at <= now:
                self._fail(message, "expired")
                continue
            self._outbox.add(message)
            self._expiry.set(message.message_id, message.expires_at)
            if message.state is DeliveryState.HELD_BY_CUSTODIAN:  # a confirmation probe
                self._retry.set(message.message_id, now + self._policy.held_probe_interval)
            else:
                self._retry.set(message.message_id, now + self._rng.uniform(0.0, spread))

    def on_transmitted(self, frame_id: bytes, *, now: float) -> None:
        """The router handed our DATA frame to a link."""
        message = self._outbox.get(frame_id)
        if message is None:
            self._custodian.transmitted(frame_id, now=now)
            return
        message.route_failed = False
        message.in_router = False
        self._advance(message, DeliveryState.SENT)
        if message.state is DeliveryState.HELD_BY_CUSTODIAN or message.attempts == 0:
            return
        # The end-to-end clock starts when the frame leaves, not while the router was
        # still discovering a path for it.
        message.last_sent_at = now
        if self._retry.due_at(frame_id) is not None:
            self._retry.set(frame_id, now + self._retry_delay(message))

    def on_next_hop_acked(self, frame_id: bytes, *, now: float) -> None:
        """The first hop confirmed it took our DATA frame."""
        message = self._outbox.get(frame_id)
        if message is not None:
            self._advance(message, DeliveryState.RELAYED)

    def on_route_failed(self, frame_id: bytes, *, now: float) -> None:
        """The router could not route our frame now; wait for ``path_available``/timer."""
        message = self._outbox.get(frame_id)
        if message is not None:
            message.route_failed = True
            message.in_router = False
            return
        self._custodian.route_failed(frame_id)

    def path_available(self, dst: NodeAddress, *, now: float) -> None:
        """A path to ``dst`` appeared: retry what waits for it now, unless a copy is on
        its way (the router flushes what it buffered itself) or left less than an RTO ago.
        """
        self._probes.clear(dst)
        rto, wait = self._rtt.rto(dst), self._policy.unroutable_wait
        for message in self._outbox.for_dst(dst):
            if message.state is DeliveryState.HELD_BY_CUSTODIAN:
                # The custodian delivers. Long after it took the message, one re-probe lets
                # the destination's re-ACK reach us if its notice found us offline.
                last = message.last_probe_at
                if last is None or now - last >= self._policy.held_probe_interval:
                    self._retry.set(message.message_id, now)
                continue
            when = retry_at(now, message.last_sent_at, message.in_router,
                             message.route_failed, rto, wait)
            due = self._retry.due_at(message.message_id)
            if when is not None and (due is None or due > when):
                self._retry.set(message.message_id, when)
        self._custodian.path_available(dst, now=now)

    def neighbour_appeared(self, *, now: float) -> None:
        """A link came up: destinations whose last try found no way out are tried again
        now (one probe each, through ``path_available``'s gate), not after the back-off."""
        waiting = {m.dst for m in self._outbox if m.route_failed}
        for dst in waiting:
            self.path_available(dst, now=now)

    # --- periodic work ------------------------------------------------------------
    def poll(self, *, now: float, can_route: Callable[[NodeAddress], bool]) -> list[Frame]:
        """Frames to originate now: ACKs, receipts, first sends, retries, hand-offs."""
        frames = self._ready
        due = self._timer_deadline()
        if due is None or due > now:
            # MeshCore polls after every input (~3 per message) and mostly no timer is
            # due: skip the four heap walks (5-7 % of a daemon's CPU, profiled).
            if frames:
                self._ready = []
                self._ready_since = None
            return frames
        self._expire(now)
        frames = self._ready
        self._ready = []
        self._ready_since = None
        while (message_id := self._retry.pop_due(now)) is not None:
            message = self._outbox.get(message_id)
            if message is not None:
                frame = self._transmit(message, now, can_route)
                if frame is not None:
                    frames.append(frame)
        frames += self._custodian.due(now=now, can_route=can_route)
        self._probes.prune(now)
        return frames

    def next_deadline(self) -> float | None:
        ready, timers = self._ready_since, self._timer_deadline()
        if ready is None or (timers is not None and timers < ready):
            return timers
        return ready

    def _timer_deadline(self) -> float | None:
        """The earliest retry, expiry or custody timer (no lists: called on every input)."""
        best = self._retry.peek()
        for when in (self._expiry.peek(), self._custodian.next_deadline()):
            if when is not None and (best is None or when < best):
                best = when
        return best

    def next_event(self) -> CoreEvent | None:
        return self._events.popleft() if self._events else None

    def flush_acks(self, *, now: float) -> list[Frame]:
        """The ACKs owed since the last call, batched per sender (``batch_acks`` only)."""
        if not self._acks:
            return []
        return self._acks.frames(ttl=self._config.default_ttl)

    def outbox(self) -> list[OutboxEntry]:
        return self._outbox.entries()

    def custody(self) -> list[Frame]:
        return [held.frame for held in self._custodian.store]

    def custody_records(self) -> list[tuple[Frame, float]]:
        """(frame, hold-until) pairs, the shape ``restore_custody`` takes back."""
        return [(held.frame, held.hold_until) for held in self._custodian.store]

    def restore_custody(self, frames: list[tuple[Frame, float]], *, now: float) -> None:
        """Reload persisted custody frames (``expires_at`` in this ``now``'s timebase)."""
        self._custodian.restore(frames, now=now)

    # --- frames addressed to this node --------------------------------------------
    def on_local_frame(
        self,
        frame: Frame,
        *,
        now: float,
        key_of: Callable[[NodeAddress], PublicIdentity | None],
    ) -> None:
        """A DATA / ACK / CUSTODY_OFFER / CUSTODY_RECEIPT frame whose dst is this node."""
        if frame.dst != self._address or frame.src == self._address:
            return
        try:
            if frame.type is FrameType.DATA:
                self._on_data(frame, now)
            elif frame.type is FrameType.ACK:
                self._on_ack(frame, now, key_of)
            elif frame.type is FrameType.CUSTODY_RECEIPT:
                self._on_receipt(frame, now)
            elif frame.type is FrameType.CUSTODY_OFFER:
                self._on_offer(frame, now)
        except FrameDecodeError:
            self.stats.malformed += 1

    def _on_data(self, frame: Frame, now: float) -> None:
        body = decode_data_body(frame.body)
        key = (frame.src, frame.frame_id)
        record = self._seen.get(key)
        if record is None:
            record = self._seen.add(
                key, payload_digest(body.payload), now=now, lifetime=body.lifetime_left
            )
            self.stats.seen_evicted = self._seen.evicted
            self.stats.delivered_to_app += 1
            self._events.append(
                MessageReceived(frame.src, frame.frame_id, body.payload, frame.hops)
            )
        else:
            self.stats.duplicates += 1
        custodian = body.custodian
        if custodian is not None and custodian != self._address:
            # A custodian's copy: our receipt lets it delete the copy, and it passes the
            # receipt (signed by us: proof of delivery) on to the sender; an ACK of our own
            # would only be a second notice of the same delivery.
            self._custodian.send_receipt(frame.frame_id, frame.src, frame.dst, record.digest,
                                         custodian, now)
            return
        # ACK every copy (the first ACK may have been lost), but not a burst of copies.
        if frame.flags & FrameFlags.ACK_REQUESTED and now - record.last_ack_at >= (
            self._policy.reack_gap
        ):
            self._queue_ack(frame, record, now)

    def _on_receipt(self, frame: Frame, now: float) -> None:
        body = decode_receipt_body(frame.body)
        if body.origin == self._address:
            self._on_own_receipt(frame, body, now)
            return
        self._custodian.on_receipt(frame, body, now=now)

    def _on_own_receipt(self, frame: Frame, body: CustodyReceiptBody, now: float) -> None:
        message = self._outbox.get(body.message_id)
        if message is None:
            self.stats.receipts_unknown += 1
            return
        # Signed by the destination (relayed by the last custodian): proof of delivery.
        signer = message.dst if body.signer == message.dst else frame.src
        if not body.verify(signer=signer, destination=message.dst, digest=message.digest):
            self.stats.receipts_forged += 1
            return
        if signer == message.dst:
            self._finish(message, DeliveryState.DELIVERED)
            return
        if STATE_RANK[message.state] < STATE_RANK[DeliveryState.HELD_BY_CUSTODIAN]:
            message.custodian = signer
            # The custodian delivers: no more retries, only rare confirmation probes.
            message.last_probe_at = now
            interval = self._policy.held_probe_interval * self._jitter()
            self._retry.set(message.message_id, now + interval)
            self._advance(message, DeliveryState.HELD_BY_CUSTODIAN)

    def _on_offer(self, frame: Frame, now: float) -> None:
        inner = decode_offer_body(frame.body).inner
        if inner.dst == self._address:
            self._on_data(inner, now)
        elif inner.src != self._address:
            self.take_custody(inner, now=now)

    # --- custodian ------------------------------------------------------------------
    def take_custody(self, frame: Frame, *, now: float) -> bool:
        """Hold a DATA frame the router could not forward; False when refused."""
        if frame.type is not FrameType.DATA or not frame.flags & FrameFlags.CUSTODY_ALLOWED:
            return False
        if frame.dst == self._address:
            return False
        if frame.src == self._address:  # our own message: the outbox holds it already
            message = self._outbox.get(frame.frame_id)
            if message is None:
                return False
            message.route_failed = True
            return True
        try:
            body = decode_data_body(frame.body)
        except FrameDecodeError:
            self.stats.malformed += 1
            return False
        return self._custodian.take(frame, body, now=now)

    def offer_custody(self, to: NodeAddress, *, now: float, limit: int = 64) -> int:
        """Offer up to ``limit`` frames to neighbour ``to`` as custodian; returns how many.

        The router calls it when ``to`` is a better holder: for frames we hold for others,
        and for our own messages it gave up routing (so that a sender about to go offline
        can leave them with a neighbour). ``to`` confirms with a CUSTODY_RECEIPT.
        """
        inners: list[Frame] = []
        for message in self._outbox:
            if len(inners) >= limit:
                break
            if message.route_failed and message.dst != to and STATE_RANK[message.state] < (
                STATE_RANK[DeliveryState.HELD_BY_CUSTODIAN]
            ):
                message.attempts += 1
                message.last_sent_at = now
                inners.append(self._own_frame(message, now))
        inners += self._custodian.offers(to, now=now, limit=limit - len(inners))
        for inner in inners:
            self._queue(offer_frame(self._rng.randbytes(FRAME_ID_LEN), src=self._address,
                                    to=to, inner=inner, ttl=self._config.default_ttl), now)
        return len(inners)

    # --- internals --------------------------------------------------------------------
    def _transmit(
        self, message: OutgoingMessage, now: float, can_route: Callable[[NodeAddress], bool]
    ) -> Frame | None:
        routable = can_route(message.dst)
        if message.state is DeliveryState.HELD_BY_CUSTODIAN:
            return self._confirm_held(message, now, routable)
        if not routable and not self._probes.may_probe(message.dst, now):
            self._retry.set(message.message_id, self._probes.until(message.dst, now) + 0.01)
            return None
        message.attempts += 1
        message.last_sent_at = now
        message.in_router = True
        frame = self._own_frame(message, now)
        delay = self._retry_delay(message)
        if not routable:
            # The router discovers a path first (seconds); do not retry into that.
            delay = max(delay, self._policy.unroutable_wait)
            self._probes.hold(message.dst, now + delay)
        self._retry.set(message.message_id, now + delay)
        if message.attempts == 1:
            self.stats.data_originated += 1
        else:
            self.stats.retries += 1
        return frame

    def _confirm_held(self, message: OutgoingMessage, now: float, routable: bool) -> Frame | None:
        """A custodian holds it. Long after that, and only with a route, re-send it so that
        the destination re-ACKs: its first notice may have found us offline."""
        message.held_checks += 1
        if not routable:  # nothing to send; look again later, less and less often
            interval = min(self._policy.held_probe_cap,
                           self._policy.held_probe_interval * 2 ** min(message.held_checks, 16))
            self._retry.set(message.message_id, now + interval * self._jitter())
            return None
        # Routable: retry like a normal message until the ACK (or the relayed receipt).
        self._retry.set(message.message_id, now + min(
            self._policy.held_probe_cap,
            backoff_delay(self._rtt.rto(message.dst), message.held_checks - 1, self._policy,
                          self._rng)))
        message.attempts += 1
        message.last_sent_at = message.last_probe_at = now
        return self._own_frame(message, now)

    def _jitter(self) -> float:
        j = self._policy.jitter
        return self._rng.uniform(1.0 - j, 1.0 + j)

    def _retry_delay(self, message: OutgoingMessage) -> float:
        return backoff_delay(self._rtt.rto(message.dst), message.attempts - 1, self._policy,
                             self._rng)

    def _own_frame(self, message: OutgoingMessage, now: float) -> Frame:
        """Our DATA frame for the current attempt (the caller counted it)."""
        return Frame(
            FrameType.DATA,
            message.message_id,
            self._address,
            message.dst,
            DataBody(message.payload, lifetime_left(message.expires_at, now)).encode(),
            DATA_FLAGS,
            ttl=self._config.default_ttl,
            attempt=message.last_attempt_byte,
        )

    def _expire(self, now: float) -> None:
        while (message_id := self._expiry.pop_due(now)) is not None:
            message = self._outbox.get(message_id)
            if message is not None:
                self._finish(message, DeliveryState.FAILED, "expired")
        self._custodian.expire(now)

    def _queue_ack(self, frame: Frame, record: Delivered, now: float) -> None:
        record.last_ack_at = now
        self.stats.acks_sent += 1
        if self._acks is not None:
            self._acks.add(frame.src, frame.frame_id, frame.attempt, record)
            return
        self._queue(single_ack(self._identity, self._rng, message_id=frame.frame_id,
                               attempt=frame.attempt, record=record, sender=frame.src,
                               ttl=self._config.default_ttl), now)  # fmt: skip

    def _queue(self, frame: Frame, now: float) -> None:
        self._ready.append(frame)
        if self._ready_since is None:
            self._ready_since = now

    def _advance(self, message: OutgoingMessage, state: DeliveryState) -> None:
        """Move forward only: a late SENT after RELAYED changes nothing."""
        if STATE_RANK[state] > STATE_RANK[message.state]:
            message.state = state
            self._emit_state(message)

    def _finish(
        self, message: OutgoingMessage, state: DeliveryState, reason: str | None = None
    ) -> None:
        self._outbox.remove(message.message_id)
        self._retry.cancel(message.message_id)
        self._expiry.cancel(message.message_id)
        message.state = state
        self._emit_state(message, reason)

    def _fail(self, message: OutgoingMessage, reason: str) -> None:
        message.state = DeliveryState.FAILED
        self._emit_state(message, reason)

    def _emit_state(self, message: OutgoingMessage, reason: str | None = None) -> None:
        self._events.append(
            DeliveryStateChanged(message.message_id, message.dst, message.state, reason,
                                 message.custodian)
        )
