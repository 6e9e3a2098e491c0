"""The node's pump saves MLS write-behind state before any frame leaves (real Nodes)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import Caller, Direction
from meshd.testing.memtransport import MemoryTransport, connect

pytestmark = pytest.mark.timeout(60)

CHAT = Caller(uid=1000, gid=1000, pid=1, app_id="chat", is_admin=False)


def open_node(root: Path, name: str, seed: int) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(root / name, transports=transports, logger=make_logger(level="warning"),
                     rng=random.Random(seed))  # fmt: skip
    return node, made[0]


def watch_sends(node: Node, transport: MemoryTransport, unsaved: list[int]) -> list[int]:
    """Count the frames the node's links send; note each one sent while the node's MLS
    engine still held un-flushed ratchet state."""
    sent: list[int] = []
    for wire in transport.wires:
        end = wire.end_of(transport)
        real = end.send

        def send(frame: bytes, real: Callable[[bytes], None] = real) -> None:
            engine = node.mls
            assert isinstance(engine, MlsRsEngine)
            sent.append(len(frame))
            if any(g.unflushed for g in engine._groups.values()):
                unsaved.append(len(sent))
            real(frame)

        end.send = send  # type: ignore[method-assign]
    return sent


async def test_no_frame_leaves_while_mls_state_is_unflushed(tmp_path: Path) -> None:
    x, tx = open_node(tmp_path, "x", 1)
    z, tz = open_node(tmp_path, "z", 2)
    connect(tx, tz)
    unsaved: list[int] = []
    x_sent = watch_sends(x, tx, unsaved)
    z_sent = watch_sends(z, tz, unsaved)
    for n in (x, z):
        await n.start()
    try:
        assert isinstance(x.mls, MlsRsEngine) and x.mls.write_behind
        payloads = [b"burst %d" % i for i in range(40)]
        await asyncio.gather(
            *(x.send_message(CHAT, z.address, p, lifetime_s=None) for p in payloads)
        )

        def received() -> list[bytes]:
            rows = z.history(CHAT, peer=x.address, limit=100, before_cursor=None)
            return [r.payload for r in rows if r.direction is Direction.INCOMING]

        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while sorted(received()) != sorted(payloads):
            assert loop.time() < end, "not delivered in time"
            await asyncio.sleep(0.02)
        assert x_sent and z_sent  # ciphertexts went one way, ACKs the other
        assert unsaved == []  # without the pump's flush: frames 2, 3, 4... (checked)
    finally:
        for n in (x, z):
            await n.stop()
