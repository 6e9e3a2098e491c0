"""Two real ``Node``s linked in memory, each serving the gRPC API on a real Unix socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshd.api.server import ApiServer, serve
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import messaging_pb2_grpc as mgrpc
from meshd.api.v1 import node_pb2_grpc as ngrpc
from meshd.crypto.identity import Identity
from meshd.node import Node
from meshd.testing.memtransport import MemoryTransport, MemoryWire, connect


@dataclass
class Peer:
    node: Node
    server: ApiServer
    transport: MemoryTransport

    @property
    def socket(self) -> str:
        return self.server.socket_path

    @property
    def address(self) -> str:
        return self.node.address.text


@dataclass
class Pair:
    a: Peer
    b: Peer
    wire: MemoryWire


def _open(state_dir: Path) -> tuple[Node, MemoryTransport]:
    transport = MemoryTransport(name="memory")

    def transports(identity: Identity) -> list[MemoryTransport]:
        transport.bind_identity(identity.public)
        return [transport]

    return Node.open(state_dir, transports), transport


@asynccontextmanager
async def node_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A and B, one memory link between them, both started and serving."""
    node_a, ta = _open(tmp_path / "a")
    node_b, tb = _open(tmp_path / "b")
    wire = connect(ta, tb)
    started: list[Node] = []
    servers: list[ApiServer] = []
    try:
        for node in (node_a, node_b):
            await node.start()
            started.append(node)
        for node, name in ((node_a, "a.sock"), (node_b, "b.sock")):
            servers.append(await serve(node, str(tmp_path / name)))
        yield Pair(Peer(node_a, servers[0], ta), Peer(node_b, servers[1], tb), wire)
    finally:
        for server in servers:
            await server.stop(0.2)
        for node in started:
            await node.stop()


class Api:
    """Stubs on one channel, acting as one app."""

    def __init__(self, channel: grpc.aio.Channel, app: str) -> None:
        self.channel = channel
        self.md = (("meshd-app", app),)
        self.node = ngrpc.NodeServiceStub(channel)
        self.msg = mgrpc.MessagingServiceStub(channel)


@asynccontextmanager
async def api(socket_path: str, app: str = "default") -> AsyncIterator[Api]:
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        yield Api(channel, app)


async def next_event(
    stream: grpc.aio.UnaryStreamCall, kind: str, *, message_id: str | None = None
) -> mpb.Event:
    """The next event of ``kind`` (for ``message_id`` when given), skipping others."""
    async for event in stream:
        if event.WhichOneof("kind") != kind:
            continue
        if message_id is not None and _message_id(event) != message_id:
            continue
        assert isinstance(event, mpb.Event)
        return event
    raise AssertionError(f"stream ended before a {kind} event")


def _message_id(event: mpb.Event) -> str:
    if event.WhichOneof("kind") == "message_received":
        return event.message_received.message.message_id
    return event.delivery_state.message_id
