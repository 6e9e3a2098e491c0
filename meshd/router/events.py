"""Events the mesh core hands up to its adapter (daemon, simulator, tests)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.crypto.identity import PublicIdentity
from meshd.router.frames import Frame

LinkId = int


class DeliveryState(enum.Enum):
    """Where an outgoing message is, as the sending app sees it."""

    QUEUED = "queued"  # in the outbox, no path or waiting to be sent
    SENT = "sent"  # handed to a link
    RELAYED = "relayed"  # the next hop confirmed it took the frame
    HELD_BY_CUSTODIAN = "held_by_custodian"  # a custodian signed a receipt; sender stops retrying
    DELIVERED = "delivered"  # the destination's signed end-to-end ACK arrived
    FAILED = "failed"  # lifetime over or refused; ``reason`` says why

    @property
    def is_final(self) -> bool:
        return self in (DeliveryState.DELIVERED, DeliveryState.FAILED)


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A DATA frame for this node, delivered to the app exactly once."""

    src: NodeAddress
    message_id: bytes
    payload: bytes
    hops: int  # the frame header's hop count: relays passed, 0 from a direct neighbour


@dataclass(frozen=True, slots=True)
class DeliveryStateChanged:
    message_id: bytes
    dst: NodeAddress
    state: DeliveryState
    reason: str | None = None
    custodian: NodeAddress | None = None


@dataclass(frozen=True, slots=True)
class NeighbourUp:
    link_id: LinkId
    peer: NodeAddress


@dataclass(frozen=True, slots=True)
class NeighbourDown:
    link_id: LinkId
    peer: NodeAddress


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The best path to ``dst`` changed; ``next_hop`` is None when it was lost."""

    dst: NodeAddress
    next_hop: NodeAddress | None
    hops: int
    cost: float


@dataclass(frozen=True, slots=True)
class PeerIdentityLearned:
    """A verified announce (or handshake) told us the public identity behind an address."""

    address: NodeAddress
    identity: PublicIdentity
    extensions: bytes


@dataclass(frozen=True, slots=True)
class LinkAdviceChanged:
    """The router wants a link kept (cluster member / bridge) or dropped (surplus)."""

    link_id: LinkId
    keep: bool
    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame from a neighbour was refused (malformed, forged, rate-limited)."""

    link_id: LinkId
    reason: str


@dataclass(frozen=True, slots=True)
class CustodyTaken:
    """This node now holds ``frame`` (DATA, for others) as custodian until ``hold_until``.

    Queued before the custody receipt leaves: the daemon persists the frame in the same
    pump, so the receipt (a promise to keep it) never outruns the write.
    """

    frame: Frame
    hold_until: float  # core (monotonic) time


@dataclass(frozen=True, slots=True)
class CustodyReleased:
    """A frame held for others is gone: ``reason`` is delivered, handed_on or expired."""

    src: NodeAddress
    frame_id: bytes
    reason: str


CoreEvent = (
    MessageReceived
    | DeliveryStateChanged
    | NeighbourUp
    | NeighbourDown
    | PathChanged
    | PeerIdentityLearned
    | LinkAdviceChanged
    | FrameRejected
    | CustodyTaken
    | CustodyReleased
)
