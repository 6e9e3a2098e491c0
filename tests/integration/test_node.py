"""Nodes in one process, linked by the in-memory transport, through the real MeshCore."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.crypto.identity import Identity
from meshd.errors import InvalidArgument, NotFound, PermissionDenied, StoreError
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import AppEvent, AppEventKind, Caller, Direction
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import MemoryTransport, connect

pytestmark = pytest.mark.timeout(60)

CHAT = Caller(uid=1000, gid=1000, pid=1, app_id="chat", is_admin=False)
OTHER = Caller(uid=1000, gid=1000, pid=2, app_id="other", is_admin=False)


def open_node(root: Path, name: str, seed: int = 0) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(
        root / name,
        transports=transports,
        logger=make_logger(level="warning"),
        rng=random.Random(seed),
    )
    return node, made[0]


async def wait_for(
    events: AsyncIterator[AppEvent], pred: object, within: float = 10.0
) -> AppEvent:
    assert callable(pred)

    async def scan() -> AppEvent:
        async for ev in events:
            if pred(ev):
                return ev
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(scan(), within)


async def until(pred: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``pred`` (state with no event to wait on, e.g. a neighbour's announce)."""
    for _ in range(int(within / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def received(ev: AppEvent) -> bool:
    return ev.kind is AppEventKind.MESSAGE_RECEIVED


def delivered(ev: AppEvent) -> bool:
    return (
        ev.kind is AppEventKind.DELIVERY_STATE
        and ev.message is not None
        and ev.message.state is DeliveryState.DELIVERED
    )


async def test_two_nodes_exchange_and_ack(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    b_events = b.subscribe(CHAT, after_cursor=None)
    a_events = a.subscribe(CHAT, after_cursor=None)
    try:
        rec = await a.send_message(CHAT, b.address, b"hello b", lifetime_s=None)
        assert rec.state is DeliveryState.QUEUED and rec.direction is Direction.OUTGOING
        got = await wait_for(b_events, received)
        assert got.message is not None
        assert got.message.payload == b"hello b" and got.message.peer == a.address
        assert got.message.app_id == "chat" and got.message.message_id == rec.message_id
        assert got.message.hops == 1
        ack = await wait_for(a_events, delivered)
        assert ack.message is not None and ack.message.message_id == rec.message_id
        assert a.get_message(CHAT, rec.message_id).state is DeliveryState.DELIVERED
        assert a.status().outbox == 0 and a.status().neighbours == 1
        (nb,) = a.neighbours()
        assert nb.address == b.address and abs(nb.up_since - time.time()) < 60  # unix time
        hist = b.history(CHAT, peer=a.address, limit=10, before_cursor=None)
        assert [h.payload for h in hist] == [b"hello b"]
    finally:
        await b_events.aclose()  # type: ignore[attr-defined]
        await a_events.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b.stop()


async def test_three_hops_chain(tmp_path: Path) -> None:
    nodes = [open_node(tmp_path, n, i) for i, n in enumerate("abcd")]
    for (_, t1), (_, t2) in itertools.pairwise(nodes):
        connect(t1, t2)
    for node, _ in nodes:
        await node.start()
    a, d = nodes[0][0], nodes[3][0]
    d_events = d.subscribe(CHAT, after_cursor=None)
    a_events = a.subscribe(CHAT, after_cursor=None)
    try:
        rec = await a.send_message(CHAT, d.address, b"over three hops", lifetime_s=60)
        got = await wait_for(d_events, received)
        assert got.message is not None and got.message.payload == b"over three hops"
        assert got.message.hops == 3  # links travelled (the core's count is relays: 2)
        ack = await wait_for(a_events, delivered)
        assert ack.message is not None and ack.message.message_id == rec.message_id
        route = next(r for r in a.routes() if r.dst == d.address)
        assert route.hops == 3 and route.expires_at > time.time()  # unix time
    finally:
        await d_events.aclose()  # type: ignore[attr-defined]
        await a_events.aclose()  # type: ignore[attr-defined]
        for node, _ in nodes:
            await node.stop()


async def test_send_returns_only_once_durable(tmp_path: Path) -> None:
    a, _ = open_node(tmp_path, "a")
    b, _ = open_node(tmp_path, "b")
    await a.start()
    try:
        rec = await a.send_message(CHAT, b.address, b"keep me", lifetime_s=None)
        # A separate connection sees only committed data: what a kill -9 would leave.
        other = sqlite3.connect(tmp_path / "a" / "meshd.db")
        rows = other.execute("SELECT message_id, state FROM outbox").fetchall()
        other.close()
        assert rows == [(rec.message_id, "queued")]
    finally:
        await a.stop()
        await b.stop()


async def test_outbox_resumes_after_restart(tmp_path: Path) -> None:
    a, _ = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    await a.start()
    await b.start()
    rec = await a.send_message(CHAT, b.address, b"while apart", lifetime_s=3600)
    await a.stop()  # no link ever came up: the message is still queued on disk

    a2, ta2 = open_node(tmp_path, "a", 3)
    assert a2.address == a.address  # same identity from the state dir
    await a2.start()
    assert a2.status().outbox == 1
    b_events = b.subscribe(CHAT, after_cursor=None)
    a_events = a2.subscribe(CHAT, after_cursor=None)
    try:
        connect(ta2, tb)
        got = await wait_for(b_events, received, within=20)
        assert got.message is not None and got.message.payload == b"while apart"
        assert got.message.message_id == rec.message_id
        ack = await wait_for(a_events, delivered, within=20)
        assert ack.message is not None and ack.message.message_id == rec.message_id
    finally:
        await b_events.aclose()  # type: ignore[attr-defined]
        await a_events.aclose()  # type: ignore[attr-defined]
        await a2.stop()
        await b.stop()


async def test_events_resume_from_cursor_across_restart(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    events = b.subscribe(CHAT, after_cursor=None)
    seen: list[AppEvent] = []
    for i in range(3):
        await a.send_message(CHAT, b.address, f"m{i}".encode(), lifetime_s=None)
        seen.append(await wait_for(events, received))
    await events.aclose()  # type: ignore[attr-defined]
    await b.stop()

    b2, tb2 = open_node(tmp_path, "b", 4)
    await b2.start()
    resumed = b2.subscribe(CHAT, after_cursor=seen[0].cursor)
    try:
        rest = [await wait_for(resumed, received) for _ in range(2)]
        assert [e.message.payload for e in rest if e.message] == [b"m1", b"m2"]
        assert [e.cursor for e in rest] == [e.cursor for e in seen[1:]]
        # A message arriving now continues the same cursor sequence.
        connect(ta, tb2)
        await a.send_message(CHAT, b2.address, b"m3", lifetime_s=None)
        live = await wait_for(resumed, received)
        assert live.message is not None and live.message.payload == b"m3"
        assert live.cursor > seen[-1].cursor
    finally:
        await resumed.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b2.stop()


async def test_app_isolation_and_ownership(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    chat = b.subscribe(CHAT, after_cursor=None)
    other = b.subscribe(OTHER, after_cursor=None)
    try:
        r1 = await a.send_message(CHAT, b.address, b"for chat", lifetime_s=None)
        await a.send_message(OTHER, b.address, b"for other", lifetime_s=None)
        got_chat = await wait_for(chat, received)
        got_other = await wait_for(other, received)
        assert got_chat.message is not None and got_chat.message.payload == b"for chat"
        assert got_other.message is not None and got_other.message.payload == b"for other"
        assert [h.payload for h in b.history(OTHER, peer=None, limit=10, before_cursor=None)] == [
            b"for other"
        ]
        with pytest.raises(NotFound):
            a.get_message(OTHER, r1.message_id)
        # "chat" belongs to uid 1000 on a now; uid 1001 may not use it, an admin may.
        intruder = Caller(uid=1001, gid=1001, pid=9, app_id="chat", is_admin=False)
        with pytest.raises(PermissionDenied) as info:
            await a.send_message(intruder, b.address, b"x", lifetime_s=None)
        assert info.value.field == "app_id"
        admin = Caller(uid=0, gid=0, pid=9, app_id="chat", is_admin=True)
        assert a.get_message(admin, r1.message_id).payload == b"for chat"
        # An admin using an unclaimed app id does not take it over.
        await a.send_message(
            Caller(uid=0, gid=0, pid=9, app_id="notes", is_admin=True),
            b.address,
            b"from root",
            lifetime_s=None,
        )
        assert a.store.app_owner("notes") is None
        notes_user = Caller(uid=1002, gid=1002, pid=9, app_id="notes", is_admin=False)
        assert a.history(notes_user, peer=None, limit=5, before_cursor=None)[0].payload == (
            b"from root"
        )
        assert a.store.app_owner("notes") == 1002
        with pytest.raises(InvalidArgument) as bad:
            await a.send_message(
                Caller(uid=1, gid=1, pid=1, app_id="Bad App", is_admin=False),
                b.address,
                b"x",
                lifetime_s=None,
            )
        assert bad.value.field == "app_id"
        with pytest.raises(InvalidArgument) as self_send:
            await a.send_message(CHAT, a.address, b"x", lifetime_s=None)
        assert self_send.value.field == "dst"
        with pytest.raises(InvalidArgument) as life:
            await a.send_message(CHAT, b.address, b"x", lifetime_s=0)
        assert life.value.field == "lifetime"
        with pytest.raises(InvalidArgument):
            b.history(CHAT, peer=None, limit=0, before_cursor=None)
        ahead = b.subscribe(CHAT, after_cursor=10_000)
        with pytest.raises(InvalidArgument, match="ahead of this node") as reset:
            await ahead.__anext__()
        assert reset.value.field == "after_cursor"
    finally:
        await chat.aclose()  # type: ignore[attr-defined]
        await other.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b.stop()


async def test_lossy_link_delivers_all_exactly_once(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb, loss=0.1, seed=7)
    await a.start()
    await b.start()
    events = b.subscribe(CHAT, after_cursor=None)
    try:
        n = 30
        for i in range(n):
            await a.send_message(CHAT, b.address, f"{i}".encode(), lifetime_s=None)
        got = [await wait_for(events, received, within=30) for _ in range(n)]
        assert sorted(int(e.message.payload) for e in got if e.message) == list(range(n))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b.stop()


async def test_ack_waits_for_the_receivers_fsync(tmp_path: Path) -> None:
    """B must not acknowledge a message before it is on B's disk."""
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    gate = threading.Event()
    real_sync = b.store.sync_wal
    synced: list[float] = []

    def slow_sync() -> None:
        gate.wait(10)
        real_sync()
        synced.append(time.monotonic())

    b.store.sync_wal = slow_sync  # type: ignore[method-assign]
    a_events = a.subscribe(CHAT, after_cursor=None)
    try:
        rec = await a.send_message(CHAT, b.address, b"durable first", lifetime_s=None)
        await asyncio.sleep(0.5)
        assert a.get_message(CHAT, rec.message_id).state is not DeliveryState.DELIVERED
        gate.set()
        ack = await wait_for(a_events, delivered)
        assert ack.message is not None and ack.message.message_id == rec.message_id
        assert synced, "the ACK arrived without B's fsync"
    finally:
        gate.set()
        await a_events.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b.stop()


async def test_failed_fsync_fails_the_send(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    sent_before = sum(end.sent for end in (w.end_of(ta) for w in ta.wires))

    def broken_sync() -> None:
        raise StoreError("fsync failed: disk on fire")

    a.store.sync_wal = broken_sync  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreError, match="disk on fire"):
            await a.send_message(CHAT, b.address, b"x", lifetime_s=None)
        sent_after = sum(end.sent for end in (w.end_of(ta) for w in ta.wires))
        assert sent_after == sent_before  # the DATA frame was held back
    finally:
        a.store.sync_wal = lambda: None  # type: ignore[method-assign]
        await a.stop()
        await b.stop()


async def test_subscribers_never_see_uncommitted_cursors(tmp_path: Path) -> None:
    """A cursor an app saw must survive a crash (else it could be handed out again)."""
    a, _ = open_node(tmp_path, "a", 1)
    b, _ = open_node(tmp_path, "b", 2)
    await a.start()
    events = a.subscribe(CHAT, after_cursor=None)
    try:
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.05)
        real_commit = a.store.commit
        a.store.commit = lambda: None  # type: ignore[method-assign]  # hold the transaction
        # Written but not committed (as between a write and its pump's commit): invisible,
        # even to a woken subscriber and through pumps that failed to commit.
        a.store.append_event(None, AppEventKind.PATH_CHANGED, time.time(), peer=b.address)
        a._wake_subscribers()
        await asyncio.sleep(0.05)
        assert not first.done()
        a.store.commit = real_commit  # type: ignore[method-assign]
        a._schedule_pump()  # commits: now it may be seen
        ev = await asyncio.wait_for(first, 5)
        assert ev.kind is AppEventKind.PATH_CHANGED
        other = sqlite3.connect(tmp_path / "a" / "meshd.db")
        committed = other.execute("SELECT max(cursor) FROM events").fetchone()[0]
        other.close()
        assert ev.cursor <= committed
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b.stop()


async def test_battery_reaches_the_neighbours(tmp_path: Path) -> None:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name="a"))
        return made

    a = Node.open(
        tmp_path / "a", transports=transports, battery=20, logger=make_logger(level="warning")
    )
    b, tb = open_node(tmp_path, "b", 2)
    connect(made[0], tb)
    await a.start()
    await b.start()
    try:
        await until(lambda: bool(b.neighbours()) and b.neighbours()[0].battery == 20)
        a.set_battery(70, charging=True)
        await until(lambda: b.neighbours()[0].battery == 70)
    finally:
        await a.stop()
        await b.stop()


async def test_big_database_is_checked_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    import meshd.store.schema
    import meshd.store.store

    monkeypatch.setattr(meshd.store.schema, "QUICK_CHECK_AT_OPEN_MAX_BYTES", 0)
    monkeypatch.setattr(meshd.store.store, "QUICK_CHECK_AT_OPEN_MAX_BYTES", 0)
    out = io.StringIO()
    node = Node.open(tmp_path / "a", logger=make_logger(level="info", fmt="json", stream=out))
    assert not node.store.checked_at_open
    await node.start()
    try:
        for _ in range(250):
            if "store_integrity_ok" in out.getvalue():
                break
            await asyncio.sleep(0.02)
        assert '"msg": "store_integrity_ok"' in out.getvalue()
    finally:
        await node.stop()


async def test_message_waits_for_a_restarted_relay(tmp_path: Path) -> None:
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
        await a.send_message(CHAT, c.address, b"warm-up", lifetime_s=None)
        await wait_for(c_events, received)
        await b.stop()  # the only relay goes away
        rec = await a.send_message(CHAT, c.address, b"while b is down", lifetime_s=600)
        await asyncio.sleep(0.3)
        assert a.get_message(CHAT, rec.message_id).state is not DeliveryState.DELIVERED
        b2, tb2 = open_node(tmp_path, "b", 4)  # same state dir: same identity
        connect(ta, tb2)
        connect(tb2, tc)
        await b2.start()
        got = await wait_for(c_events, received, within=30)
        assert got.message is not None and got.message.payload == b"while b is down"
        ack = await wait_for(
            a_events, lambda e: delivered(e) and e.message.message_id == rec.message_id, 30
        )
        assert ack.message is not None
        await b2.stop()
    finally:
        await c_events.aclose()  # type: ignore[attr-defined]
        await a_events.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await c.stop()


async def test_writes_during_an_fsync_share_one_commit_and_wait_for_it(tmp_path: Path) -> None:
    """Group commit: while an fsync runs, sends are written but committed (and released)
    only once it returns, all in one commit; every reply still waits for its own fsync."""
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    gate = threading.Event()
    real_sync = a.store.sync_wal
    syncs: list[float] = []

    def slow_sync() -> None:
        gate.wait(10)
        real_sync()
        syncs.append(time.monotonic())

    added = 0  # add_outgoing calls not yet committed
    batches: list[int] = []  # per commit: how many of them it covered
    real_commit, real_add = a.store.commit, a.store.add_outgoing

    def counting_add(**kwargs: Any) -> Any:
        nonlocal added
        added += 1
        return real_add(**kwargs)

    def counting_commit() -> None:
        nonlocal added
        if a.store.in_transaction:
            batches.append(added)
            added = 0
        real_commit()

    try:
        first = asyncio.ensure_future(a.send_message(CHAT, b.address, b"0", lifetime_s=None))
        await asyncio.sleep(0.05)
        a.store.sync_wal = slow_sync  # type: ignore[method-assign]
        await asyncio.wait_for(first, 5)
        blocker = asyncio.ensure_future(a.send_message(CHAT, b.address, b"1", lifetime_s=None))
        await asyncio.sleep(0.05)  # its fsync is running (held)
        a.store.commit = counting_commit  # type: ignore[method-assign]
        a.store.add_outgoing = counting_add  # type: ignore[method-assign]
        rest = [
            asyncio.ensure_future(a.send_message(CHAT, b.address, b"%d" % i, lifetime_s=None))
            for i in range(2, 12)
        ]
        await asyncio.sleep(0.1)
        assert batches == [] and not any(f.done() for f in (blocker, *rest))
        gate.set()
        records = await asyncio.wait_for(asyncio.gather(blocker, *rest), 10)
        assert batches[0] == 10  # the ten sends made during the fsync: one commit
        assert len(syncs) == 2  # and one more fsync covering them before any reply
        assert len({r.message_id for r in records}) == 11
    finally:
        gate.set()
        a.store.commit = real_commit  # type: ignore[method-assign]
        a.store.add_outgoing = real_add  # type: ignore[method-assign]
        await a.stop()
        await b.stop()


async def test_sends_wait_while_the_window_to_a_destination_is_full(tmp_path: Path) -> None:
    """Backpressure (meshd.sendwindow): with 64 messages to B on the link and none of them
    link-acknowledged, the next send waits; B's LINK_ACKs let it through."""
    from meshd.sendwindow import DEFAULT_LIMIT

    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    wire = connect(ta, tb)
    await a.start()
    await b.start()
    b_end = wire.end_of(tb)
    real_send = b_end.send
    held: list[bytes] = []
    # A knows B's MLS key package (from B's announce) before B's frames are held, so the
    # messages are sealed and sent at once instead of waiting for a key package.
    for _ in range(200):
        if a.e2e.has_kp(b.address):
            break
        await asyncio.sleep(0.01)
    try:
        # B -> A: nothing arrives (held here)
        b_end.send = held.append  # type: ignore[method-assign,assignment]
        for i in range(DEFAULT_LIMIT):
            await asyncio.wait_for(a.send_message(CHAT, b.address, b"%d" % i, lifetime_s=None), 5)
        await asyncio.sleep(0.05)
        assert a._window.in_flight(b.address) == DEFAULT_LIMIT
        late = asyncio.ensure_future(a.send_message(CHAT, b.address, b"late", lifetime_s=None))
        await asyncio.sleep(0.3)
        assert not late.done()
        assert a.store.outbox_count() == DEFAULT_LIMIT  # waiting: not accepted, not stored
        b_end.send = real_send  # type: ignore[method-assign]
        for frame in held:
            real_send(frame)
        record = await asyncio.wait_for(late, 5)
        assert record.payload == b"late"
    finally:
        b_end.send = real_send  # type: ignore[method-assign]
        await a.stop()
        await b.stop()
