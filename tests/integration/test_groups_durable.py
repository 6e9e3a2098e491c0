"""Group sends survive a crash of the sender; the sender's group messages are in its
history with an aggregate delivery state; received ones carry the group id.

The crash: the sender's state directory is copied right after the API call returned,
while the node still runs (its SQLite and MLS databases as a kill -9 would leave them:
committed, never closed), and a node opened on the copy takes over.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.e2e.group_wire import Role
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import Caller, Direction
from meshd.router.core import CoreConfig
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import MemoryTransport, connect

pytestmark = pytest.mark.timeout(60)

CHAT = Caller(uid=1000, gid=1000, pid=1, app_id="chat", is_admin=False)


def open_node(
    root: Path, name: str, seed: int, config: CoreConfig | None = None
) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(root / name, transports=transports, logger=make_logger(level="warning"),
                     rng=random.Random(seed), core_config=config)  # fmt: skip
    return node, made[0]


async def until(pred: Callable[[], bool], within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def received(node: Node) -> list[bytes]:
    rows = node.history(CHAT, peer=None, limit=100, before_cursor=None)
    return [r.payload for r in reversed(rows) if r.direction is Direction.INCOMING]


def crash_copy(root: Path, name: str, copy: str) -> None:
    """The state directory as a kill -9 now would leave it (the lock is not copied)."""
    shutil.copytree(root / name, root / copy, ignore=shutil.ignore_patterns("*.lock", "lock"))


async def test_group_message_and_commit_survive_a_sender_crash(tmp_path: Path) -> None:
    x, tx = open_node(tmp_path, "x", 1)
    z, tz = open_node(tmp_path, "z", 3)
    connect(tx, tz)
    await x.start()
    await z.start()
    x2: Node | None = None
    try:
        await until(lambda: len(x.neighbours()) == 1)
        gid = (await x.create_group(CHAT, "g")).group_id
        await x.invite_to_group(CHAT, gid, [z.address], Role.MEMBER)
        await until(lambda: len(z.list_groups(CHAT)) == 1)
        epoch = z.list_groups(CHAT)[0].epoch
        await z.stop()  # unreachable from here on
        await x.set_group_role(CHAT, gid, z.address, Role.ADMIN)  # a COMMIT for z
        rec = await x.send_group_message_record(CHAT, gid, b"while z is away")
        assert rec.group_id == gid and rec.direction is Direction.OUTGOING
        assert rec.peer == x.address and rec.state is DeliveryState.QUEUED
        crash_copy(tmp_path, "x", "x2")
        await x.stop()  # the original is thrown away: only the copy goes on

        x2, tx2 = open_node(tmp_path, "x2", 4)
        assert x2.address == x.address
        await x2.start()
        # The COMMIT and the DATA for z came back from group_outbox into the core.
        assert x2._gm_carriers is not None and len(x2._gm_carriers) == 2
        assert sum(1 for m in x2._gm_carriers.values() if m == rec.message_id) == 1
        z, tz = open_node(tmp_path, "z", 3)
        connect(tx2, tz)
        await z.start()
        await until(lambda: received(z) == [b"while z is away"])
        assert z.list_groups(CHAT)[0].epoch == epoch + 1
        assert z.list_groups(CHAT)[0].admins == tuple(sorted([x.address, z.address]))
        # Received ones name their group too.
        got = z.history(CHAT, peer=None, limit=10, before_cursor=None)
        assert [r.group_id for r in got if r.direction is Direction.INCOMING] == [gid]

        def state() -> DeliveryState | None:
            return x2.get_message(CHAT, rec.message_id).state if x2 else None

        await until(lambda: state() is DeliveryState.DELIVERED)
        assert x2._gm_carriers == {}
        await asyncio.sleep(0.3)
        assert received(z) == [b"while z is away"]  # once
        mine = x2.history(CHAT, peer=None, limit=10, before_cursor=None)
        assert [(r.group_id, r.payload) for r in mine] == [(gid, b"while z is away")]
        rows = x2.group_history(CHAT, gid, limit=10)
        assert [(r.sender, r.content, r.state) for r in rows] == [
            (x.address, b"while z is away", DeliveryState.DELIVERED)
        ]
        assert x2.store._read("SELECT count(*) FROM group_outbox")[0][0] == 0
    finally:
        for n in (x, z, x2):
            if n is not None:
                await n.stop()


async def test_sent_group_message_fails_when_a_copy_expires(tmp_path: Path) -> None:
    x, tx = open_node(tmp_path, "x", 1, CoreConfig(message_lifetime=4.0))
    y, ty = open_node(tmp_path, "y", 2)
    z, tz = open_node(tmp_path, "z", 3)
    connect(tx, ty)
    connect(tx, tz)
    for n in (x, y, z):
        await n.start()
    try:
        await until(lambda: len(x.neighbours()) == 2)
        gid = (await x.create_group(CHAT, "g")).group_id
        await x.invite_to_group(CHAT, gid, [y.address, z.address], Role.MEMBER)
        await until(lambda: len(z.list_groups(CHAT)) == 1 and len(y.list_groups(CHAT)) == 1)
        await z.stop()
        rec = await x.send_group_message_record(CHAT, gid, b"one of two")
        await until(lambda: received(y) == [b"one of two"])
        await asyncio.sleep(0.2)
        assert x.get_message(CHAT, rec.message_id).state is DeliveryState.QUEUED  # z: not yet
        # z's copy expires (lifetime 4 s): the aggregate is FAILED, saying how many.
        await until(lambda: x.get_message(CHAT, rec.message_id).state is DeliveryState.FAILED)
        assert x.get_message(CHAT, rec.message_id).reason == "1 of 2 copies not delivered"
        assert x._gm_carriers == {}
        assert x.store._read("SELECT count(*) FROM group_sent")[0][0] == 0
    finally:
        for n in (x, y, z):
            await n.stop()
