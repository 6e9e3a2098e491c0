"""The sender's outbox: messages this node originated and has not finished with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.router.events import DeliveryState
from meshd.router.types import OutboxEntry

# Delivery states only move forward along this order (FAILED is final from anywhere).
STATE_RANK = {
    DeliveryState.QUEUED: 0,
    DeliveryState.SENT: 1,
    DeliveryState.RELAYED: 2,
    DeliveryState.HELD_BY_CUSTODIAN: 3,
    DeliveryState.DELIVERED: 4,
    DeliveryState.FAILED: 5,
}


@dataclass(slots=True)
class OutgoingMessage:
    """Mutable sender-side record of one message."""

    message_id: bytes
    dst: NodeAddress
    payload: bytes
    digest: bytes  # SHA-256 of the payload: what the ACK signature covers
    created_at: float
    expires_at: float
    state: DeliveryState
    attempts: int = 0  # DATA frames originated so far (header ``attempt`` = attempts-1 mod 256)
    last_sent_at: float | None = None
    route_failed: bool = False  # the router could not route the last attempt
    in_router: bool = False  # originated, the router has not sent it on or given up
    custodian: NodeAddress | None = None
    last_probe_at: float | None = None  # held messages: when held, then last re-probe
    held_checks: int = 0  # held messages: confirmation timers fired so far

    @property
    def last_attempt_byte(self) -> int:
        return (self.attempts - 1) % 256

    def entry(self) -> OutboxEntry:
        return OutboxEntry(
            message_id=self.message_id,
            dst=self.dst,
            payload=self.payload,
            created_at=self.created_at,
            expires_at=self.expires_at,
            state=self.state,
            attempts=self.attempts,
        )


class Outbox:
    """Bounded table of outgoing messages, indexed by id and by destination."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_id: dict[bytes, OutgoingMessage] = {}
        self._by_dst: dict[NodeAddress, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, message_id: bytes) -> bool:
        return message_id in self._by_id

    def __iter__(self) -> Iterator[OutgoingMessage]:
        return iter(self._by_id.values())

    @property
    def full(self) -> bool:
        return len(self._by_id) >= self.limit

    def get(self, message_id: bytes) -> OutgoingMessage | None:
        return self._by_id.get(message_id)

    def add(self, message: OutgoingMessage) -> None:
        self._by_id[message.message_id] = message
        self._by_dst.setdefault(message.dst, set()).add(message.message_id)

    def remove(self, message_id: bytes) -> OutgoingMessage | None:
        message = self._by_id.pop(message_id, None)
        if message is not None:
            ids = self._by_dst.get(message.dst)
            if ids is not None:
                ids.discard(message_id)
                if not ids:
                    del self._by_dst[message.dst]
        return message

    def for_dst(self, dst: NodeAddress) -> list[OutgoingMessage]:
        return [self._by_id[mid] for mid in self._by_dst.get(dst, ())]

    def entries(self) -> list[OutboxEntry]:
        ordered = sorted(self._by_id.values(), key=lambda m: (m.created_at, m.message_id))
        return [m.entry() for m in ordered]
