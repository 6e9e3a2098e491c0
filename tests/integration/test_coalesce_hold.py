"""The pump's commit hold for concurrent unary senders (meshd/node.py, _COALESCE_HOLD_S)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from meshd.e2e.coalesce import Queued
from meshd.envelope import Envelope
from meshd.node import _COALESCE_HOLD_S, _HOLD_GAP_S, Node
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
        assert a._expect_sends <= 1 and a._hold is None  # never held
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
        assert a._expect_sends == 16
        await a.send_message(CHAT, b.address, b"alone again", lifetime_s=None)
        assert a._expect_sends == 1  # the burst is over: a lone caller is not held again
        await until(lambda: len(received(b, a)) == 1 + 18)
    finally:
        await a.stop()
        await b.stop()


async def test_a_caller_not_coming_back_costs_one_gap_not_the_hold(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path)
    queue = a._e2e_queue
    assert queue is not None and a._loop is not None
    try:
        a._expect_sends = 8  # as after a cycle of 8 concurrent callers
        queue.add(b.address, Queued(os.urandom(8), Envelope("chat", b"x"), time.time() + 60))
        a._last_send_at = a._loop.time()
        assert a._holding()
        assert a._hold is not None and a._hold_since is not None
        # The deadline is a gap after the latest arrival, well before the whole hold.
        assert a._hold.when() == a._last_send_at + _HOLD_GAP_S < a._hold_since + _COALESCE_HOLD_S
        # Another caller arrives: the hold extends, never past the whole hold.
        a._last_send_at = a._hold_since + _COALESCE_HOLD_S - _HOLD_GAP_S / 2
        assert a._holding()
        assert a._hold.when() == a._hold_since + _COALESCE_HOLD_S
        # Past the deadline (nobody else came): this pass commits.
        a._hold_since -= _COALESCE_HOLD_S
        a._last_send_at -= _COALESCE_HOLD_S
        assert not a._holding()
        # As many queued as expected: no hold at all.
        for _ in range(7):
            queue.add(b.address, Queued(os.urandom(8), Envelope("chat", b"x"), time.time() + 60))
        assert not a._holding()
    finally:
        list(queue.take())  # never stored: not for the pump to seal
        a._expect_sends = 0
        await a.stop()
        await b.stop()
