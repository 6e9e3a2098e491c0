"""1:1 MLS sessions between in-process Nodes over the memory transport (real MeshCore)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.e2e import session_wire as sw
from meshd.envelope import Envelope
from meshd.errors import NotFound
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import AppEventKind, Caller, Direction
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import MemoryTransport, connect

pytestmark = pytest.mark.timeout(60)

CHAT = Caller(uid=1000, gid=1000, pid=1, app_id="chat", is_admin=False)
ADMIN = Caller(uid=0, gid=0, pid=1, app_id="chat", is_admin=True)


def open_node(root: Path, name: str, seed: int, **kwargs: object) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(root / name, transports=transports, logger=make_logger(level="warning"),
                     rng=random.Random(seed), **kwargs)  # fmt: skip
    return node, made[0]


async def until(pred: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def inbox(node: Node, peer: Node) -> list[bytes]:
    rows = node.history(CHAT, peer=peer.address, limit=100, before_cursor=None)
    return [r.payload for r in reversed(rows) if r.direction is Direction.INCOMING]


def tap(transport: MemoryTransport) -> list[bytes]:
    """Every frame the transport's link ends send (what a relay or sniffer sees)."""
    seen: list[bytes] = []
    for wire in transport.wires:
        end = wire.end_of(transport)
        real = end.send

        def send(frame: bytes, real: Callable[[bytes], None] = real) -> None:
            seen.append(bytes(frame))
            real(frame)

        end.send = send  # type: ignore[method-assign]
    return seen


async def test_messages_are_sealed_and_delivered_over_two_hops(tmp_path: Path) -> None:
    x, tx = open_node(tmp_path, "x", 1)
    y, ty = open_node(tmp_path, "y", 2)
    z, tz = open_node(tmp_path, "z", 3)
    connect(tx, ty)
    connect(ty, tz)
    relay_frames = tap(ty)
    for n in (x, y, z):
        await n.start()
    try:
        secret = b"attack at dawn, bring the good biscuits"
        rec = await x.send_message(CHAT, z.address, secret, lifetime_s=None)
        await until(lambda: secret in inbox(z, x))
        await until(lambda: x.get_message(CHAT, rec.message_id).state is DeliveryState.DELIVERED)
        # A second message goes in the established session (no Welcome any more).
        await x.send_message(CHAT, z.address, b"second", lifetime_s=None)
        await until(lambda: b"second" in inbox(z, x))
        info = x.session_info(z.address)
        assert info.established and z.session_info(x.address).group_id == info.group_id
        # The relay forwarded ciphertext only; its store never saw the text.
        assert relay_frames and not any(secret in f for f in relay_frames)
        y.store.commit()
        relay_files = [f for f in (tmp_path / "y").rglob("*") if f.is_file()]
        assert relay_files and not any(secret in f.read_bytes() for f in relay_files)
        # Z answers in the same session.
        await z.send_message(CHAT, x.address, b"ack", lifetime_s=None)
        await until(lambda: b"ack" in inbox(x, z))
    finally:
        for n in (x, y, z):
            await n.stop()


async def test_plaintext_payload_is_refused(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    try:
        # A node of meshd 0.1 would send the bare envelope: B must drop it.
        a.core.send(b.address, Envelope("chat", b"in the clear").encode(), now=a._now())
        a._schedule_pump()
        await until(lambda: any(e.kind is AppEventKind.PLAINTEXT_REFUSED
                                for e in b.store.events_after("chat", 0, limit=100)))  # fmt: skip
        assert inbox(b, a) == []
    finally:
        await a.stop()
        await b.stop()


async def test_unknown_payload_kind_is_dropped_and_the_node_goes_on(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    try:
        junk_id = b"\x30" * 8
        a.core.send(b.address, b"\x30 no layer owns this kind", now=a._now(), message_id=junk_id)
        a._schedule_pump()
        await until(lambda: not any(e.message_id == junk_id for e in a.core.outbox()))
        await a.send_message(CHAT, b.address, b"still talking", lifetime_s=None)
        await until(lambda: inbox(b, a) == [b"still talking"])
    finally:
        await a.stop()
        await b.stop()


async def test_first_message_waits_for_key_package_and_survives_restart(tmp_path: Path) -> None:
    """No link yet: the message waits (stored) for B's key package, across a restart."""
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    await a.start()
    await b.start()
    rec = await a.send_message(CHAT, b.address, b"patience", lifetime_s=None)
    assert a.get_message(CHAT, rec.message_id).state is DeliveryState.QUEUED
    await a.stop()
    a, ta = open_node(tmp_path, "a", 1)
    await a.start()
    try:
        connect(ta, tb)
        await until(lambda: b"patience" in inbox(b, a))
        await until(lambda: a.get_message(CHAT, rec.message_id).state is DeliveryState.DELIVERED)
    finally:
        await a.stop()
        await b.stop()


async def test_restart_after_key_package_resets_and_delivers(tmp_path: Path) -> None:
    """A holds B's key package from before B restarted (its private key died with that
    run): B answers A's Welcome with SESSION_RESET, A rebuilds and re-sends."""
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    wire = connect(ta, tb)
    await a.start()
    await b.start()
    await until(lambda: a.e2e.has_kp(b.address))
    wire.cut()
    await b.stop()
    b, tb = open_node(tmp_path, "b", 2)
    await b.start()
    try:
        # A still has B's old key package (B's new announce has not reached it).
        rec = await a.send_message(CHAT, b.address, b"after restart", lifetime_s=None)
        connect(ta, tb)
        await until(lambda: b"after restart" in inbox(b, a))
        assert inbox(b, a) == [b"after restart"]  # once, although it went out twice
        await until(lambda: a.get_message(CHAT, rec.message_id).state is DeliveryState.DELIVERED)
    finally:
        await a.stop()
        await b.stop()


async def test_connection_request_with_contacts_policy(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2, accept_from="contacts")
    connect(ta, tb)
    await a.start()
    await b.start()
    try:
        # A stranger's plain message becomes an incoming request on B, not delivered.
        await a.send_message(CHAT, b.address, b"hello stranger", lifetime_s=None)
        await until(lambda: len(b.list_requests(CHAT, "incoming")) == 1)
        assert inbox(b, a) == []
        await b.accept_request(ADMIN, a.address)
        await until(lambda: b"hello stranger" in inbox(b, a))
        await until(lambda: a.session_info(b.address).established)
        assert b.list_requests(CHAT, None) == []
    finally:
        await a.stop()
        await b.stop()


async def test_explicit_request_accept_reject_cancel(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2, accept_from="contacts")
    c, tc = open_node(tmp_path, "c", 3, accept_from="contacts")
    connect(ta, tb)
    connect(ta, tc)
    for n in (a, b, c):
        await n.start()
    try:
        await until(lambda: a.e2e.has_kp(b.address) and a.e2e.has_kp(c.address))
        req = await a.connect(CHAT, b.address, b"hi b, it's a")
        assert req.direction == "outgoing"
        await until(lambda: len(b.list_requests(CHAT, "incoming")) == 1)
        await b.accept_request(ADMIN, a.address)
        await until(lambda: b"hi b, it's a" in inbox(b, a))
        await until(lambda: a.list_requests(CHAT, "outgoing") == [])
        events = [e.kind for e in a.store.events_after("chat", 0, limit=1000)]
        assert AppEventKind.CONNECTION_ACCEPTED in events
        # C rejects.
        await a.connect(CHAT, c.address, b"")
        await until(lambda: len(c.list_requests(CHAT, "incoming")) == 1)
        await c.reject_request(ADMIN, a.address)
        await until(lambda: a.list_requests(CHAT, "outgoing") == [])
        with pytest.raises(NotFound):
            a.session_info(c.address)
        # A asks again and cancels.
        await a.connect(CHAT, c.address, b"again?")
        await until(lambda: len(c.list_requests(CHAT, "incoming")) == 1)
        await a.cancel_request(CHAT, c.address)
        await until(lambda: c.list_requests(CHAT, "incoming") == [])
        assert inbox(c, a) == []
    finally:
        for n in (a, b, c):
            await n.stop()


async def test_tampered_ciphertext_is_refused_without_crashing(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    try:
        await a.send_message(CHAT, b.address, b"one", lifetime_s=None)
        await until(lambda: b"one" in inbox(b, a))
        group = a.session_info(b.address).group_id
        good = a.mls.encrypt(group, sw.Sealed(sw.SealedType.APP, b"\x01" * 8,
                                              Envelope("chat", b"forged")).encode())  # fmt: skip
        bad = bytearray(good)
        bad[-3] ^= 0x40
        a.core.send(b.address, sw.SessionApp(bytes(bad)).encode(), now=a._now())
        a._schedule_pump()
        await until(lambda: any(e.kind is AppEventKind.MESSAGE_UNDECRYPTABLE
                                for e in b.store.events_after("chat", 0, limit=100)))  # fmt: skip
        await a.send_message(CHAT, b.address, b"two", lifetime_s=None)
        await until(lambda: b"two" in inbox(b, a))
        assert b"forged" not in inbox(b, a)
    finally:
        await a.stop()
        await b.stop()


async def test_key_package_for_fetches_through_the_mesh(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    try:
        first = await a.key_package_for(b.address, timeout=10)  # from B's announce
        second = await a.key_package_for(b.address, timeout=10)  # fetched (first consumed)
        assert first != second
        for kp in (first, second):
            assert a.mls.inspect_key_package(kp, now=__import__("time").time()).address \
                == b.address
    finally:
        await a.stop()
        await b.stop()


async def test_self_updates_from_both_ends_at_once_through_real_nodes(tmp_path: Path) -> None:
    """Both ends commit a self-update in the same epoch (what their daily timers may do):
    the fork resolves through the real core and both keep talking in one epoch."""
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    try:
        await a.send_message(CHAT, b.address, b"hello", lifetime_s=None)
        await until(lambda: b"hello" in inbox(b, a))
        await until(lambda: a.session_info(b.address).established)
        gid = a.session_info(b.address).group_id
        epoch = a.mls.epoch(gid)
        wall = time.time()
        for n, peer in ((a, b), (b, a)):
            n.e2e.update(peer.address, now=wall)
            n._e2e_drain(wall)
            n._schedule_pump()
        await a.send_message(CHAT, b.address, b"from a", lifetime_s=None)
        await b.send_message(CHAT, a.address, b"from b", lifetime_s=None)
        await until(lambda: b"from a" in inbox(b, a) and b"from b" in inbox(a, b))
        # (The loser updates again at its next tick: one epoch, at least one more.)
        await until(lambda: a.e2e.pending_commit(gid) is None is b.e2e.pending_commit(gid)
                    and a.mls.epoch(gid) == b.mls.epoch(gid))  # fmt: skip
        assert a.mls.epoch(gid) > epoch
        await a.send_message(CHAT, b.address, b"after", lifetime_s=None)
        await until(lambda: b"after" in inbox(b, a))
        assert inbox(b, a).count(b"from a") == 1 and inbox(a, b).count(b"from b") == 1
    finally:
        await a.stop()
        await b.stop()


async def test_message_held_as_a_request_is_not_reported_delivered_until_accepted(
    tmp_path: Path,
) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2, accept_from="contacts")
    connect(ta, tb)
    await a.start()
    await b.start()
    try:
        rec = await a.send_message(CHAT, b.address, b"hi from a stranger", lifetime_s=None)

        def a_events(kind: AppEventKind) -> list[str]:
            return [e.detail for e in a.store.events_after("chat", 0, limit=100)
                    if e.kind is kind]  # fmt: skip

        await until(lambda: a_events(AppEventKind.AWAITING_ACCEPTANCE) == [rec.message_id.hex()])
        await until(lambda: a.get_message(CHAT, rec.message_id).state is DeliveryState.RELAYED)
        await asyncio.sleep(0.2)  # the core's ACK came long ago: still not DELIVERED
        assert a.get_message(CHAT, rec.message_id).state is DeliveryState.RELAYED
        assert inbox(b, a) == []
        await b.accept_request(ADMIN, a.address)
        await until(lambda: inbox(b, a) == [b"hi from a stranger"])
        await until(lambda: a.get_message(CHAT, rec.message_id).state is DeliveryState.DELIVERED)
    finally:
        await a.stop()
        await b.stop()
