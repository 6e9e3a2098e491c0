"""An asyncio in-memory ``Transport``: links Nodes inside one process (integration tests).

    a, b = MemoryTransport(), MemoryTransport()
    wire = connect(a, b)           # a link comes up once both transports are started
    ...; wire.cut()                # both sides see link_down

Frames are delivered with ``loop.call_soon`` (never re-entrantly), in order. ``loss`` drops
frames with a seeded RNG to exercise the router's retransmissions.
"""

from __future__ import annotations

import asyncio
import random

from meshd.crypto.identity import PublicIdentity
from meshd.errors import InvalidArgument
from meshd.router.events import LinkId
from meshd.router.types import LinkInfo, LinkKind
from meshd.transports.base import (
    Link,
    LinkEvents,
    Transport,
    TransportState,
    TransportStatus,
)


class MemoryLink(Link):
    """One end of a wire, as the local node sees it."""

    def __init__(self, wire: MemoryWire, local: MemoryTransport, remote: MemoryTransport) -> None:
        self._wire = wire
        self._local = local
        self._remote = remote
        self.link_id: LinkId | None = None  # the id the local node gave it
        self.sent = 0

    @property
    def peer(self) -> PublicIdentity:
        assert self._remote.identity is not None
        return self._remote.identity

    @property
    def info(self) -> LinkInfo:
        return LinkInfo(kind=LinkKind.MEMORY, quality=1.0 - self._wire.loss)

    @property
    def description(self) -> str:
        return f"memory {self._local.name}->{self._remote.name}"

    def send(self, frame: bytes) -> None:
        if not self._wire.up:
            return
        self.sent += 1
        if self._wire.loss and self._wire.rng.random() < self._wire.loss:
            return
        other = self._wire.end_of(self._remote)
        asyncio.get_running_loop().call_soon(self._remote.deliver, other, bytes(frame))

    def close(self) -> None:
        self._wire.cut()


class MemoryWire:
    """A point-to-point wire between two transports."""

    def __init__(self, a: MemoryTransport, b: MemoryTransport, *, loss: float, seed: int) -> None:
        self.a, self.b = a, b
        self.loss = loss
        self.rng = random.Random(seed)
        self.up = False
        self._ends = {id(a): MemoryLink(self, a, b), id(b): MemoryLink(self, b, a)}

    def end_of(self, transport: MemoryTransport) -> MemoryLink:
        return self._ends[id(transport)]

    def maybe_up(self) -> None:
        if self.up or not (self.a.running and self.b.running):
            return
        self.up = True
        for t in (self.a, self.b):
            t.bring_up(self.end_of(t))

    def cut(self) -> None:
        """Take the link down on both sides (idempotent)."""
        if not self.up:
            return
        self.up = False
        for t in (self.a, self.b):
            t.take_down(self.end_of(t))
        for t in (self.a, self.b):
            t.wires.discard(self)


class MemoryTransport(Transport):
    def __init__(self, identity: PublicIdentity | None = None, *, name: str = "memory") -> None:
        self.name = name
        self.identity = identity  # set by the node's start() when None
        self.wires: set[MemoryWire] = set()
        self.running = False
        self._events: LinkEvents | None = None
        self._links = 0

    def bind_identity(self, identity: PublicIdentity) -> None:
        self.identity = identity

    async def start(self, events: LinkEvents) -> None:
        if self.identity is None:
            raise RuntimeError("MemoryTransport needs the node identity before start")
        self._events = events
        self.running = True
        for wire in list(self.wires):
            wire.maybe_up()

    async def stop(self) -> None:
        for wire in list(self.wires):
            wire.cut()
        self.running = False
        self._events = None

    def status(self) -> TransportStatus:
        return TransportStatus(
            name=self.name,
            state=TransportState.RUNNING if self.running else TransportState.STOPPED,
            detail="in-process links",
            links=self._links,
        )

    # --- called by wires ---------------------------------------------------------------
    def bring_up(self, link: MemoryLink) -> None:
        assert self._events is not None
        self._links += 1
        link.link_id = self._events.link_up(link)

    def take_down(self, link: MemoryLink) -> None:
        if self._events is not None and link.link_id is not None:
            self._links -= 1
            self._events.link_down(link.link_id)
        link.link_id = None

    def deliver(self, link: MemoryLink, frame: bytes) -> None:
        if self._events is not None and link.link_id is not None and link._wire.up:
            self._events.frame_received(link.link_id, frame)


def connect(
    a: MemoryTransport, b: MemoryTransport, *, loss: float = 0.0, seed: int = 0
) -> MemoryWire:
    """Wire ``a`` to ``b``; the link comes up now if both run, else when both have started."""
    if not 0.0 <= loss < 1.0:
        raise InvalidArgument("loss must be in [0, 1)", field="loss")
    wire = MemoryWire(a, b, loss=loss, seed=seed)
    a.wires.add(wire)
    b.wires.add(wire)
    wire.maybe_up()
    return wire
