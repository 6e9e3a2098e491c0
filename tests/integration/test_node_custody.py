"""A custodian's held frames survive an unclean restart (issue 3: router state in SQLite)."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import AppEventKind, Direction
from meshd.router.core import CoreConfig
from meshd.router.events import DeliveryState
from meshd.router.routing import RouterConfig
from meshd.testing.memtransport import MemoryTransport, connect
from tests.integration.test_node import CHAT, delivered, received, until, wait_for

pytestmark = pytest.mark.timeout(60)


# Path discovery gives up after 0.3 + 0.6 s instead of 2.5 + 5 + 10 s: the relay takes
# custody sooner (the default's 17.5 s made this test slow, not different).
FAST = CoreConfig(router=RouterConfig(discovery_timeout=0.3, discovery_tries=2))


def open_node(root: Path, name: str, seed: int) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(root / name, transports=transports, logger=make_logger(level="warning"),
                     rng=random.Random(seed), core_config=FAST)
    return node, made[0]


def custody_rows(db: Path) -> list[tuple[bytes, bytes]]:
    """What a kill -9 would leave: a separate connection sees only committed rows."""
    conn = sqlite3.connect(db)
    try:
        return [(bytes(s), bytes(f)) for s, f in
                conn.execute("SELECT src, frame_id FROM custody_frames").fetchall()]
    finally:
        conn.close()


async def test_custodian_restarted_uncleanly_still_delivers_once(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    c, tc = open_node(tmp_path, "c", 3)
    connect(ta, tb)
    connect(tb, tc)
    for node in (a, b, c):
        await node.start()
    c_events = c.subscribe(CHAT, after_cursor=None)
    a_events = a.subscribe(CHAT, after_cursor=None)
    try:
        warm = await a.send_message(CHAT, c.address, b"warm-up", lifetime_s=None)  # session
        await wait_for(c_events, received, within=20)
        await wait_for(a_events, lambda e: delivered(e) and e.message.message_id
                       == warm.message_id, within=20)
    finally:
        await c_events.aclose()  # type: ignore[attr-defined]
    await c.stop()  # the destination goes offline

    rec = await a.send_message(CHAT, c.address, b"kept by b", lifetime_s=600)
    held = await wait_for(
        a_events,
        lambda e: e.kind is AppEventKind.DELIVERY_STATE and e.message is not None
        and e.message.message_id == rec.message_id
        and e.message.state is DeliveryState.HELD_BY_CUSTODIAN,
        within=30,
    )
    await a_events.aclose()  # type: ignore[attr-defined]
    assert held.message is not None
    # The receipt reached A, so B's row was committed before it left.
    keys = sorted((f.src.raw, f.frame_id) for f, _ in b.core.custody_records())
    assert keys and sorted(custody_rows(tmp_path / "b" / "meshd.db")) == keys

    # Unclean: copy B's state dir (database and WAL as they are) while B runs, as kill -9
    # would leave it; the original B then goes away, and so does A (only B can deliver).
    shutil.copytree(tmp_path / "b", tmp_path / "b2", ignore=shutil.ignore_patterns("*.lock"))
    await a.stop()
    await b.stop()

    b2, tb2 = open_node(tmp_path, "b2", 4)
    c2, tc2 = open_node(tmp_path, "c", 5)
    assert b2.address == b.address
    await b2.start()
    assert sorted((f.src.raw, f.frame_id) for f, _ in b2.core.custody_records()) == keys
    c_events = c2.subscribe(CHAT, after_cursor=None)
    try:
        await c2.start()
        connect(tb2, tc2)
        got = await wait_for(
            c_events, lambda e: received(e) and e.message.payload == b"kept by b", within=30
        )
        assert got.message is not None and got.message.message_id == rec.message_id
        # C's receipt releases B's copy, on disk too.
        await until(lambda: not b2.core.custody_records(), within=15)
        await until(lambda: custody_rows(tmp_path / "b2" / "meshd.db") == [], within=5)
        await asyncio.sleep(0.3)  # a duplicate would arrive now
        hist = c2.history(CHAT, peer=a.address, limit=10, before_cursor=None)
        incoming = [h.payload for h in hist if h.direction is Direction.INCOMING]
        assert incoming.count(b"kept by b") == 1
    finally:
        await c_events.aclose()  # type: ignore[attr-defined]
        await c2.stop()
        await b2.stop()


async def test_custody_row_dropped_when_expired_while_down(tmp_path: Path) -> None:
    """A row whose hold time passed while the node was down is deleted at start."""
    from meshd.router.e2e_bodies import DataBody
    from meshd.router.frames import Frame, FrameFlags, FrameType

    node, _ = open_node(tmp_path, "n", 1)
    src, dst = Identity.generate().address, Identity.generate().address
    frame = Frame(FrameType.DATA, b"\x01" * 8, src, dst, DataBody(b"x", 60).encode(),
                  FrameFlags.CUSTODY_ALLOWED, ttl=8)
    node._router_state.put_custody(frame, held_at=1.0, hold_until=2.0)  # long past
    node.store.commit()
    await node.start()
    try:
        assert node.core.custody_records() == []
        assert custody_rows(tmp_path / "n" / "meshd.db") == []
    finally:
        await node.stop()


async def test_custody_receipt_waits_for_the_custodians_fsync(tmp_path: Path) -> None:
    """B's receipt (a promise to keep the frame) must not leave before the frame is on disk."""
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    c, tc = open_node(tmp_path, "c", 3)
    connect(ta, tb)
    connect(tb, tc)
    for node in (a, b, c):
        await node.start()
    c_events = c.subscribe(CHAT, after_cursor=None)
    a_events = a.subscribe(CHAT, after_cursor=None)
    gate = threading.Event()
    synced: list[float] = []
    try:
        warm = await a.send_message(CHAT, c.address, b"warm-up", lifetime_s=None)
        await wait_for(c_events, received, within=20)
        await wait_for(a_events, lambda e: delivered(e) and e.message.message_id
                       == warm.message_id, within=20)
        await c.stop()
        real_sync = b.store.sync_wal

        def slow_sync() -> None:
            gate.wait(10)
            real_sync()
            synced.append(time.monotonic())

        b.store.sync_wal = slow_sync  # type: ignore[method-assign]
        rec = await a.send_message(CHAT, c.address, b"promised", lifetime_s=600)
        await until(lambda: bool(b.core.custody_records()), within=10)
        await asyncio.sleep(0.5)
        assert a.get_message(CHAT, rec.message_id).state is not DeliveryState.HELD_BY_CUSTODIAN
        gate.set()
        await wait_for(
            a_events,
            lambda e: e.kind is AppEventKind.DELIVERY_STATE and e.message is not None
            and e.message.message_id == rec.message_id
            and e.message.state is DeliveryState.HELD_BY_CUSTODIAN,
            within=10,
        )
        assert synced, "the custody receipt arrived without B's fsync"
    finally:
        gate.set()
        await c_events.aclose()  # type: ignore[attr-defined]
        await a_events.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b.stop()
