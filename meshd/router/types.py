"""Plain data the mesh core takes in and reports out (links, routes, outbox entries)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.router.events import DeliveryState, LinkId


class LinkKind(enum.Enum):
    BLE = "ble"
    WIFI_DIRECT = "wifi_direct"
    INET = "inet"  # TCP over LAN or Internet
    MEMORY = "memory"  # tests and the simulator


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What a transport tells the core about a link when it comes up (or changes)."""

    kind: LinkKind
    quality: float = 1.0  # 0..1 delivery probability estimate; the core refines it
    mtu: int = 65536  # largest frame the transport carries (it fragments below that)
    rssi: int | None = None  # dBm, radios only
    # bits/s the link carries, if the transport knows (sizes hop-by-hop retransmit timers,
    # meshd/router/linkrel.py); None: a per-kind prior, then learned from ACKs.
    bitrate: float | None = None


@dataclass(frozen=True, slots=True)
class NeighbourInfo:
    link_id: LinkId
    address: NodeAddress
    kind: LinkKind
    quality: float
    battery: int | None
    cluster_id: int | None
    keep: bool  # the router's advice for connection-limited transports
    up_since: float


@dataclass(frozen=True, slots=True)
class RouteInfo:
    dst: NodeAddress
    next_hop: NodeAddress
    hops: int
    cost: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A message this node originated and has not finished with; the daemon persists it."""

    message_id: bytes
    dst: NodeAddress
    payload: bytes
    created_at: float
    expires_at: float
    state: DeliveryState
    attempts: int = 0
