"""The interface every transport (inet, BLE, WiFi Direct) implements.

A transport discovers neighbours, runs the identity-bound link handshake
(``meshd.crypto.handshake``), and from then on carries whole mesh frames both ways over
an encrypted channel, fragmenting below its MTU as it must. The node (``meshd.node``)
wires links to the mesh core: the transport calls the ``LinkEvents`` methods, the node
calls ``Link.send``.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Protocol

from meshd.crypto.identity import PublicIdentity
from meshd.router.events import LinkId
from meshd.router.types import LinkInfo


class TransportState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"  # up but impaired (adapter off, bus restarting); ``detail`` says why
    STOPPED = "stopped"
    UNAVAILABLE = "unavailable"  # no hardware / service; said once, not retried in a loop


@dataclass(frozen=True, slots=True)
class TransportStatus:
    name: str
    state: TransportState
    detail: str
    links: int
    local_endpoints: tuple[str, ...] = ()


class Link(abc.ABC):
    """One authenticated, encrypted link to one neighbour."""

    @property
    @abc.abstractmethod
    def peer(self) -> PublicIdentity: ...

    @property
    @abc.abstractmethod
    def info(self) -> LinkInfo: ...

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Human-readable endpoint, e.g. ``tcp [fe80::1%veth0]:4717``."""

    @abc.abstractmethod
    def send(self, frame: bytes) -> None:
        """Queue one whole frame; never blocks. Frames past the queue bound are dropped
        (the router's hop-by-hop reliability retransmits)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class LinkEvents(Protocol):
    """What a transport reports to the node. Called on the event loop thread."""

    def link_up(self, link: Link) -> LinkId:
        """A handshake completed; the node returns the id it will use for this link."""
        ...

    def frame_received(self, link_id: LinkId, frame: bytes) -> None: ...

    def link_down(self, link_id: LinkId) -> None: ...


class Transport(abc.ABC):
    """A source of links. Started and stopped by the node."""

    name: str

    @abc.abstractmethod
    async def start(self, events: LinkEvents) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def status(self) -> TransportStatus: ...

    def advise(self, link_id: LinkId, keep: bool) -> None:
        """The router's advice for connection-limited transports (BLE); default ignores it."""
        del link_id, keep
