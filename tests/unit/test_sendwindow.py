"""SendWindow: an app's send waits while `limit` of its messages to one destination are
unacknowledged on a link, and only then."""

from __future__ import annotations

import asyncio

import pytest

from meshd.address import NodeAddress
from meshd.sendwindow import SendWindow

pytestmark = pytest.mark.timeout(10)

B, C = NodeAddress(b"\x01" * 16), NodeAddress(b"\x02" * 16)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ids(n: int) -> list[bytes]:
    return [i.to_bytes(8, "big") for i in range(n)]


async def test_send_waits_at_the_limit_until_one_is_relayed() -> None:
    window = SendWindow(Clock(), limit=3)
    for mid in ids(3)[:2]:
        window.sent(B, mid)
    assert not window.full(B)
    await asyncio.wait_for(window.room(B), 1)  # room: returns at once
    window.sent(B, ids(3)[2])
    assert window.full(B) and not window.full(C)  # per destination
    waiting = asyncio.ensure_future(window.room(B))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    window.left(B, b"unknown!")  # not one of the SENT ones: still full
    await asyncio.sleep(0.05)
    assert not waiting.done()
    window.left(B, ids(3)[0])  # RELAYED (or DELIVERED, FAILED...)
    await asyncio.wait_for(waiting, 1)
    assert window.in_flight(B) == 2


async def test_stale_sent_messages_stop_holding_room() -> None:
    clock = Clock()
    window = SendWindow(clock, limit=2, stale_after=2.0)
    window.sent(B, ids(2)[0])
    clock.t += 1.5
    window.sent(B, ids(2)[1])
    assert window.full(B)
    clock.t += 1.0  # the first is 2.5 s old: its link died or it was rerouted
    assert not window.full(B)
    assert window.in_flight(B) == 1


async def test_a_waiter_sees_staleness_without_any_event() -> None:
    clock = Clock()
    window = SendWindow(clock, limit=1, stale_after=2.0)
    window.sent(B, ids(1)[0])
    waiting = asyncio.ensure_future(window.room(B))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    clock.t += 3.0
    await asyncio.wait_for(waiting, 2)  # re-checked on its own (every 0.25 s)


async def test_release_all_wakes_every_waiter() -> None:
    window = SendWindow(Clock(), limit=1)
    window.sent(B, ids(1)[0])
    window.sent(C, ids(1)[0])
    waiters = [asyncio.ensure_future(window.room(d)) for d in (B, C, B)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    window.release_all()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert window.in_flight(B) == window.in_flight(C) == 0


def test_a_message_sent_again_holds_room_from_its_latest_send() -> None:
    """Entries stay in time order: one SENT again (rerouted) is not expired by its first
    send's time, and the stale ones after it still expire."""
    clock = Clock()
    window = SendWindow(clock, limit=3, stale_after=2.0)
    first, second, third = ids(3)
    window.sent(B, first)
    window.sent(B, second)
    clock.t += 1.5
    window.sent(B, first)  # SENT again on another link: fresh
    window.sent(B, third)
    assert window.full(B)
    clock.t += 1.0  # second is 2.5 s old: stale; first and third 1.0 s
    assert not window.full(B)
    assert window.in_flight(B) == 2
    clock.t += 1.5  # now all are stale
    window.sent(C, second)
    assert not window.full(B) and window.in_flight(C) == 1


async def test_each_freed_slot_wakes_one_waiter_in_order() -> None:
    clock = Clock()
    w = SendWindow(clock, limit=2, stale_after=60.0)
    for m in ids(2):
        w.sent(B, m)
    woken: list[int] = []

    async def wait(n: int) -> None:
        await w.room(B)
        woken.append(n)
        w.sent(B, (100 + n).to_bytes(8, "big"))  # its send takes the slot

    tasks = [asyncio.create_task(wait(n)) for n in range(4)]
    await asyncio.sleep(0.01)
    assert woken == []
    queued = list(w._waiters[B])
    w.left(B, ids(2)[0])
    assert [f.done() for f in queued] == [True, False, False, False]  # not a herd
    await asyncio.sleep(0.01)
    assert woken == [0]  # one slot: one waiter, the first
    w.left(B, ids(2)[1])
    await asyncio.sleep(0.01)
    assert woken == [0, 1]
    w.release_all()
    await asyncio.gather(*tasks)
    assert sorted(woken) == [0, 1, 2, 3]
