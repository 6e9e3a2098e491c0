"""Coalesced 1:1 sends between in-process Nodes (memory transport, real MeshCore and MLS)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from meshd.e2e.coalesce import Coalescer
from meshd.envelope import Envelope
from meshd.node import Node
from meshd.node_api import AppEventKind, Direction
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import connect
from tests.integration.test_e2e_sessions import CHAT, open_node, until

pytestmark = pytest.mark.timeout(60)


def received(node: Node, peer: Node) -> list[bytes]:
    rows = node.history(CHAT, peer=peer.address, limit=1000, before_cursor=None)
    return [r.payload for r in reversed(rows) if r.direction is Direction.INCOMING]


def count(node: Node, table: str) -> int:
    return int(node.store._read(f"SELECT count(*) FROM {table}")[0][0])


async def burst(node: Node, peer: Node, texts: list[bytes]) -> list[bytes]:
    """Concurrent sends (one pump pass takes them all), as many API callers make."""
    records = await asyncio.gather(
        *(node.send_message(CHAT, peer.address, t, lifetime_s=None) for t in texts)
    )
    return [r.message_id for r in records]


def all_delivered(node: Node, ids: list[bytes]) -> bool:
    return all(node.get_message(CHAT, m).state is DeliveryState.DELIVERED for m in ids)


@pytest.mark.parametrize("coalesce", [True, False])
async def test_burst_shares_carriers_and_each_message_gets_its_states(
    tmp_path: Path, coalesce: bool
) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    a.coalesce = coalesce
    try:
        await a.send_message(CHAT, b.address, b"hello", lifetime_s=None)  # the session
        await until(lambda: received(b, a) == [b"hello"])
        await until(lambda: a.session_info(b.address).established)  # CONN_ACCEPT
        texts = [f"m{i:03d}".encode() for i in range(40)]
        ids = await burst(a, b, texts)
        await until(lambda: received(b, a)[1:] == texts)
        await until(lambda: all_delivered(a, ids))
        members = count(a, "e2e_batch")
        if coalesce:
            # 40 messages in a few carriers (bounded by MAX_RECORDS = 64 and the pump).
            assert members >= 30 and count(a, "e2e_sealed") <= 1 + 40 - members
        else:
            assert members == 0 and count(a, "e2e_sealed") == 41
        # Every message went through the states on its own (history, events).
        events = a.store.events_after("chat", 0, limit=1000)
        delivered_ids = {e.message.message_id for e in events
                         if e.kind is AppEventKind.DELIVERY_STATE and e.message is not None
                         and e.message.state is DeliveryState.DELIVERED}  # fmt: skip
        assert set(ids) <= delivered_ids and len(delivered_ids) == 41
        if coalesce:
            # Nothing in flight any more: a lone message is sealed at once (as Nagle);
            # the next one in the same pass waits for the pump.
            until_s = time.time() + 60
            first = a._sessions_seal(b.address, Envelope("chat", b"now"), os.urandom(8),
                                     expires_at=until_s)  # fmt: skip
            second = a._sessions_seal(b.address, Envelope("chat", b"next"), os.urandom(8),
                                      expires_at=until_s)  # fmt: skip
            assert first is not None and second is None and a._e2e_queue
            assert a._e2e_queue is not None and len(a._e2e_queue) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_queued_carriers_survive_a_restart(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    wire = connect(ta, tb)
    await a.start()
    await b.start()
    try:
        await a.send_message(CHAT, b.address, b"hello", lifetime_s=None)
        await until(lambda: received(b, a) == [b"hello"])
        await until(lambda: a.session_info(b.address).established)  # CONN_ACCEPT
        wire.cut()  # no path: the carriers wait in the outbox
        texts = [f"offline{i}".encode() for i in range(12)]
        ids = await burst(a, b, texts)
        assert count(a, "e2e_batch") >= 6
        await a.stop()
        a, ta = open_node(tmp_path, "a", 1)
        await a.start()
        assert a._e2e_batches  # the carriers' members are known again
        connect(ta, tb)
        # Each once (the first went alone, before the others' carrier: order may differ).
        await until(lambda: sorted(received(b, a)[1:]) == sorted(texts), within=30)
        await until(lambda: all_delivered(a, ids), within=30)
        assert not a._e2e_batches  # final states forget the mapping
    finally:
        await a.stop()
        await b.stop()


async def test_lossy_link_delivers_each_message_once(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb, loss=0.2, seed=7)
    await a.start()
    await b.start()
    try:
        await a.send_message(CHAT, b.address, b"hello", lifetime_s=None)
        await until(lambda: received(b, a) == [b"hello"], within=30)
        await until(lambda: a.session_info(b.address).established)  # CONN_ACCEPT
        ids: list[bytes] = []
        texts: list[bytes] = []
        for round_ in range(3):
            batch = [f"r{round_}m{i}".encode() for i in range(15)]
            ids += await burst(a, b, batch)
            texts += batch
        await until(lambda: sorted(received(b, a)[1:]) == sorted(texts), within=40)
        await until(lambda: all_delivered(a, ids), within=40)
        assert count(a, "e2e_batch") > 0
    finally:
        await a.stop()
        await b.stop()


async def test_a_carrier_too_large_for_the_core_is_halved(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    a._e2e_queue = Coalescer(max_bytes=10**6)  # no byte bound: 64 KiB does not fit
    try:
        await a.send_message(CHAT, b.address, b"hello", lifetime_s=None)
        await until(lambda: received(b, a) == [b"hello"])
        await until(lambda: a.session_info(b.address).established)  # CONN_ACCEPT
        texts = [f"{i:04d}".encode().ljust(1024, b".") for i in range(64)]
        ids = await burst(a, b, texts)
        await until(lambda: received(b, a)[1:] == texts)
        await until(lambda: all_delivered(a, ids))
        assert 32 <= count(a, "e2e_batch") < 63  # split, still coalesced
    finally:
        await a.stop()
        await b.stop()
