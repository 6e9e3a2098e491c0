"""What the gRPC servicers need from the node: the seam between ``meshd.api`` and ``meshd.node``.

``meshd.node.Node`` implements this; the servicers take any ``NodeApi`` (the real node
in tests too, wired to in-memory links, never a mock standing in for the behaviour
under test).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meshd.address import NodeAddress
from meshd.crypto.tofu import Contact
from meshd.errors import MeshdError
from meshd.router.events import DeliveryState
from meshd.router.types import NeighbourInfo, RouteInfo
from meshd.transports.base import TransportStatus


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: kernel-verified credentials (SO_PEERCRED) plus the declared app id."""

    uid: int
    gid: int
    pid: int
    app_id: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class NodeStatus:
    address: NodeAddress
    version: str
    started_at: float  # unix time
    uptime_s: float
    neighbours: int
    routes: int
    outbox: int
    state_dir: str


class Direction(enum.Enum):
    OUTGOING = "outgoing"
    INCOMING = "incoming"


@dataclass(frozen=True, slots=True)
class MessageRecord:
    message_id: bytes
    app_id: str
    direction: Direction
    peer: NodeAddress  # destination for outgoing, source for incoming
    payload: bytes
    created_at: float  # unix time
    state: DeliveryState | None  # outgoing only
    reason: str | None
    hops: int | None  # incoming only
    # Event-log cursor of the event that recorded it (QUEUED / MESSAGE_RECEIVED): history
    # pages with ``before_cursor`` in the same cursor space as ``subscribe``.
    cursor: int | None = None
    # The MLS group it was sent to / received in (meshd/node_groups.py); None: 1:1. An
    # outgoing group message's ``peer`` is this node and ``state`` the aggregate over the
    # copies to every member (DELIVERED once all are).
    group_id: bytes | None = None


class AppEventKind(enum.Enum):
    MESSAGE_RECEIVED = "message_received"
    DELIVERY_STATE = "delivery_state"
    NEIGHBOUR_UP = "neighbour_up"
    NEIGHBOUR_DOWN = "neighbour_down"
    PATH_CHANGED = "path_changed"
    # A pinned peer presented another exchange key: refused until trusted (meshd.crypto.tofu).
    KEY_CHANGED = "key_changed"
    # 1:1 end-to-end sessions and connection requests (meshd/e2e/requests.py).
    CONNECTION_REQUEST = "connection_request"
    CONNECTION_ACCEPTED = "connection_accepted"
    CONNECTION_REJECTED = "connection_rejected"
    CONNECTION_CANCELLED = "connection_cancelled"
    CONNECTION_EXPIRED = "connection_expired"
    SESSION_ESTABLISHED = "session_established"
    MESSAGE_UNDECRYPTABLE = "message_undecryptable"
    PLAINTEXT_REFUSED = "plaintext_refused"
    # The peer holds our message (detail: its id) as a connection request, unopened.
    AWAITING_ACCEPTANCE = "awaiting_acceptance"
    # MLS groups (meshd/node_groups.py); ``detail`` starts with "group=<hex id>".
    GROUP_CREATED = "group_created"
    GROUP_JOINED = "group_joined"
    GROUP_MEMBER_ADDED = "group_member_added"
    GROUP_MEMBER_REMOVED = "group_member_removed"
    GROUP_ROLE_CHANGED = "group_role_changed"
    GROUP_LEFT = "group_left"
    GROUP_REMOVED = "group_removed"


@dataclass(frozen=True, slots=True)
class AppEvent:
    """One entry of an app's durable event log; ``cursor`` increases strictly per node."""

    cursor: int
    kind: AppEventKind
    at: float  # unix time
    message: MessageRecord | None = None  # MESSAGE_RECEIVED, DELIVERY_STATE
    peer: NodeAddress | None = None  # NEIGHBOUR_*, PATH_CHANGED
    detail: str = ""


class NodeApi(Protocol):
    @property
    def address(self) -> NodeAddress: ...

    def status(self) -> NodeStatus: ...

    def neighbours(self) -> list[NeighbourInfo]: ...

    def routes(self) -> list[RouteInfo]: ...

    def transports(self) -> list[TransportStatus]: ...

    async def send_message(
        self, caller: Caller, dst: NodeAddress, payload: bytes, *, lifetime_s: float | None
    ) -> MessageRecord:
        """Persist (durably) then queue; returns once a kill -9 can no longer lose it."""
        ...

    def send_messages(
        self,
        caller: Caller,
        items: AsyncIterable[tuple[NodeAddress, bytes, float | None] | MeshdError],
    ) -> AsyncIterator[MessageRecord | MeshdError]:
        """``send_message`` for each (dst, payload, lifetime_s), many in flight; one
        result per item, in order (a refused item yields its error)."""
        ...

    def get_message(self, caller: Caller, message_id: bytes) -> MessageRecord: ...

    def history(
        self,
        caller: Caller,
        *,
        peer: NodeAddress | None,
        limit: int,
        before_cursor: int | None,
    ) -> list[MessageRecord]: ...

    def subscribe(self, caller: Caller, *, after_cursor: int | None) -> AsyncIterator[AppEvent]:
        """Stored events after ``after_cursor`` (all retained when None... see impl),
        then live ones as they happen. Only the caller's app's messages."""
        ...


@dataclass(frozen=True, slots=True)
class IdentityInfo:
    """This node's public identity and its short fingerprint (docs/identity.md)."""

    address: NodeAddress
    signing_key: bytes
    exchange_key: bytes
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ContactInfo:
    """A pinned peer as the API shows it."""

    contact: Contact
    fingerprint: str  # the peer's short fingerprint
    safety_number: str | None = None  # 60 digits; only computed for single-contact reads


@runtime_checkable
class ContactsApi(Protocol):
    """Identity, TOFU pins and contacts. Reads are open to every caller; changes need an
    admin or the daemon's own uid (an app must not accept a key change for the user)."""

    def identity_info(self) -> IdentityInfo: ...

    def list_contacts(self) -> list[ContactInfo]: ...

    def get_contact(self, address: NodeAddress) -> ContactInfo: ...

    async def set_contact_name(
        self, caller: Caller, address: NodeAddress, name: str
    ) -> ContactInfo: ...

    async def trust_key_change(self, caller: Caller, address: NodeAddress) -> ContactInfo: ...

    async def verify_contact(
        self, caller: Caller, address: NodeAddress, safety_number: str
    ) -> ContactInfo: ...
