"""The pump's commit hold for concurrent unary senders, in a node (meshd/commit_hold.py;
its rules alone: tests/unit/test_commit_hold.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshd.node import Node
from meshd.testing.memtransport import connect
from tests.integration.test_coalesce_node import all_delivered, count, received
from tests.integration.test_e2e_sessions import CHAT, open_node, until

pytestmark = pytest.mark.timeout(60)


async def _pair(tmp_path: Path) -> tuple[Node, Node]:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    await a.send_message(CHAT, b.address, b"hello", lifetime_s=None)  # the session
    await until(lambda: received(b, a) == [b"hello"])
    await until(lambda: a.session_info(b.address).established)  # CONN_ACCEPT
    return a, b


async def _staggered_callers(a: Node, b: Node, callers: int, each: int) -> list[bytes]:
    """As unary API callers: each sends, waits for its reply, and comes back a little
    later than the others (a client's own processing of its reply)."""
    ids: list[bytes] = []

    async def caller(k: int) -> None:
        for i in range(each):
            record = await a.send_message(CHAT, b.address, f"c{k}m{i}".encode(),
                                          lifetime_s=None)  # fmt: skip
            ids.append(record.message_id)
            await asyncio.sleep(0.0002 * k)

    await asyncio.gather(*(caller(k) for k in range(callers)))
    return ids


async def test_staggered_callers_share_carriers(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path)
    try:
        ids = await _staggered_callers(a, b, callers=8, each=6)
        await until(lambda: len(received(b, a)) == 1 + len(ids))
        await until(lambda: all_delivered(a, ids))
        carriers = count(a, "e2e_sealed") - 1  # the first message went alone
        # Measured: 48 messages in 7 carriers (3 runs); 13-15 with Node._holding
        # patched to return False (every pass commits at once while no fsync runs).
        assert carriers <= 10
    finally:
        await a.stop()
        await b.stop()


async def test_a_lone_caller_never_waits(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path)
    try:
        for i in range(20):  # back to back: each queued behind the one still in flight
            await a.send_message(CHAT, b.address, f"m{i}".encode(), lifetime_s=None)
        assert a._commit_hold.expect <= 1 and a._hold is None  # never held
        await until(lambda: len(received(b, a)) == 21)
    finally:
        await a.stop()
        await b.stop()


async def test_peak_of_concurrent_callers_sets_the_hold(tmp_path: Path) -> None:
    """16 callers at once: the next cycle's first pass holds for 16, not for the 8 or so
    a pass happened to queue (that split them into two alternating groups)."""
    a, b = await _pair(tmp_path)
    try:
        await asyncio.gather(*(a.send_message(CHAT, b.address, f"p{k}".encode(),
                                              lifetime_s=None) for k in range(16)))  # fmt: skip
        await a.send_message(CHAT, b.address, b"one more", lifetime_s=None)
        assert a._commit_hold.expect == 16
        await a.send_message(CHAT, b.address, b"alone again", lifetime_s=None)
        assert a._commit_hold.expect == 1  # the burst is over: a lone caller is not held
        await until(lambda: len(received(b, a)) == 1 + 18)
    finally:
        await a.stop()
        await b.stop()
