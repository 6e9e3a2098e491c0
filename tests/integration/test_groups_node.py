"""MLS groups between in-process Nodes over the memory transport (real MeshCore, real
engines, key packages fetched through the mesh)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.e2e.group_wire import Role
from meshd.errors import PermissionDenied
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import AppEventKind, Caller, Direction
from meshd.testing.memtransport import MemoryTransport, connect

pytestmark = pytest.mark.timeout(90)

CHAT = Caller(uid=1000, gid=1000, pid=1, app_id="chat", is_admin=False)
OTHER = Caller(uid=1000, gid=1000, pid=1, app_id="notes", is_admin=False)


def open_node(root: Path, name: str, seed: int) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(root / name, transports=transports, logger=make_logger(level="warning"),
                     rng=random.Random(seed))  # fmt: skip
    return node, made[0]


async def until(pred: Callable[[], bool], within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def texts(node: Node, caller: Caller = CHAT) -> list[bytes]:
    rows = node.history(caller, peer=None, limit=100, before_cursor=None)
    return [r.payload for r in reversed(rows) if r.direction is Direction.INCOMING]


def events(node: Node, kind: AppEventKind) -> int:
    return sum(1 for e in node.store.events_after("chat", 0, limit=1000) if e.kind is kind)


async def test_group_over_two_hops_with_roles_and_removal(tmp_path: Path) -> None:
    x, tx = open_node(tmp_path, "x", 1)
    y, ty = open_node(tmp_path, "y", 2)
    z, tz = open_node(tmp_path, "z", 3)
    connect(tx, ty)
    connect(ty, tz)  # x and z are not neighbours
    for n in (x, y, z):
        await n.start()
    try:
        info = await x.create_group(CHAT, "team")
        gid = info.group_id
        info = await x.invite_to_group(CHAT, gid, [y.address, z.address], Role.MEMBER)
        assert info.members == 3 and info.role is Role.ADMIN
        await until(lambda: len(z.list_groups(CHAT)) == 1 and len(y.list_groups(CHAT)) == 1)
        assert {m.address for m in z.group_members(CHAT, gid)} == {x.address, y.address, z.address}
        await x.send_group_message(CHAT, gid, b"hello team")
        await until(lambda: texts(z) == [b"hello team"] and texts(y) == [b"hello team"])
        assert texts(z, OTHER) == []  # another app does not see chat's group messages
        assert len(z.group_history(CHAT, gid, limit=10)) == 1
        # The event stream names the group too (an app tells group from 1:1 messages).
        received = [
            e.message
            for e in z.store.events_after("chat", 0, limit=1000)
            if e.kind is AppEventKind.MESSAGE_RECEIVED and e.message is not None
        ]
        # Hops unknown: a group message may come by catch-up or be replayed after a Welcome.
        assert [(m.payload, m.group_id, m.hops) for m in received] == [(b"hello team", gid, None)]
        with pytest.raises(PermissionDenied):
            await z.remove_from_group(CHAT, gid, [y.address])
        await x.set_group_role(CHAT, gid, y.address, Role.ADMIN)
        await until(lambda: z.list_groups(CHAT)[0].admins == tuple(sorted([x.address, y.address])))
        await y.remove_from_group(CHAT, gid, [z.address])
        await until(lambda: z.list_groups(CHAT) == [])
        await until(lambda: x.list_groups(CHAT)[0].members == 2)
        await y.send_group_message(CHAT, gid, b"without z")
        await until(lambda: texts(x) == [b"without z"])
        await asyncio.sleep(0.3)
        assert texts(z) == [b"hello team"]
        assert events(z, AppEventKind.GROUP_REMOVED) == 1
        assert events(x, AppEventKind.GROUP_MEMBER_ADDED) >= 2
    finally:
        for n in (x, y, z):
            await n.stop()


async def test_member_offline_during_two_commits_catches_up_after_restart(tmp_path: Path) -> None:
    x, tx = open_node(tmp_path, "x", 1)
    y, ty = open_node(tmp_path, "y", 2)
    z, tz = open_node(tmp_path, "z", 3)
    connect(tx, ty)
    connect(tx, tz)
    for n in (x, y, z):
        await n.start()
    try:
        await until(lambda: len(x.neighbours()) >= 2)
        gid = (await x.create_group(CHAT, "g")).group_id
        await x.invite_to_group(CHAT, gid, [y.address, z.address], Role.MEMBER)
        await until(lambda: len(z.list_groups(CHAT)) == 1 and len(y.list_groups(CHAT)) == 1)
        epoch = z.list_groups(CHAT)[0].epoch
        await z.stop()
        await x.set_group_role(CHAT, gid, y.address, Role.ADMIN)
        await x.set_group_role(CHAT, gid, y.address, Role.MEMBER)
        assert x.list_groups(CHAT)[0].epoch == epoch + 2
        z, tz = open_node(tmp_path, "z", 3)
        connect(tx, tz)
        await z.start()
        assert z.list_groups(CHAT)[0].epoch == epoch  # restored from disk, behind
        await until(lambda: len(x.neighbours()) >= 2)
        await x.send_group_message(CHAT, gid, b"after two commits")
        await until(lambda: texts(z) == [b"after two commits"], within=30.0)
        assert z.list_groups(CHAT)[0].epoch == epoch + 2
        assert z.list_groups(CHAT)[0].admins == (x.address,)
    finally:
        for n in (x, y, z):
            await n.stop()
