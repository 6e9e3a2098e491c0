"""``pipelined``: many calls in flight, results in request order, errors in place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from meshd.errors import InvalidArgument, MeshdError, ResourceExhausted
from meshd.sendstream import pipelined

pytestmark = pytest.mark.timeout(10)


async def _items(values: list[int | MeshdError]) -> AsyncIterator[int | MeshdError]:
    for v in values:
        yield v


async def test_results_come_in_request_order_while_calls_overlap() -> None:
    running = 0
    peak = 0

    async def call(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (10 - i % 10))  # later items finish first
        running -= 1
        return i * 2

    out = [r async for r in pipelined(_items(list(range(50))), call, in_flight=8)]
    assert out == [i * 2 for i in range(50)]
    assert 1 < peak <= 8


async def test_refused_items_and_failed_calls_yield_errors_in_place() -> None:
    bad = InvalidArgument("bad dst", field="dst")

    async def call(i: int) -> int:
        if i == 3:
            raise ResourceExhausted("outbox full", field="dst")
        return i

    out = [r async for r in pipelined(_items([1, bad, 3, 4]), call)]
    assert out[0] == 1 and out[1] is bad and out[3] == 4
    assert isinstance(out[2], ResourceExhausted)


async def test_a_client_may_wait_for_each_reply_before_sending_the_next() -> None:
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[int]:
        while (item := await queue.get()) is not None:
            yield item

    async def call(i: int) -> int:
        return i + 100

    replies = pipelined(requests(), call)
    for i in range(3):
        queue.put_nowait(i)
        assert await anext(replies) == i + 100  # no deadlock: the reply comes first
    queue.put_nowait(None)
    assert [r async for r in replies] == []


async def test_abandoned_stream_lets_started_calls_finish() -> None:
    finished: list[int] = []

    async def call(i: int) -> int:
        await asyncio.sleep(0.01)
        finished.append(i)
        return i

    replies = pipelined(_items(list(range(5))), call, in_flight=5)
    assert await anext(replies) == 0
    assert isinstance(replies, AsyncGenerator)
    await replies.aclose()
    await asyncio.sleep(0.05)
    assert sorted(finished) == [0, 1, 2, 3, 4]


async def test_broken_request_stream_ends_after_what_was_read() -> None:
    async def requests() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("client went away")

    async def call(i: int) -> int:
        return i

    replies = pipelined(requests(), call)
    assert await anext(replies) == 1
    with pytest.raises(ConnectionError):
        await anext(replies)


async def test_in_flight_must_be_positive() -> None:
    async def call(i: int) -> int:
        return i

    with pytest.raises(InvalidArgument) as info:
        await anext(pipelined(_items([1]), call, in_flight=0))
    assert info.value.field == "in_flight"


async def test_admit_holds_the_stream_before_each_call_starts() -> None:
    gate = asyncio.Event()
    started: list[int] = []
    admitted: list[int] = []

    async def admit(i: int) -> None:
        if i == 2:
            await gate.wait()  # e.g. the destination's send window is full
        admitted.append(i)

    async def call(i: int) -> int:
        started.append(i)
        return i

    replies = pipelined(_items([0, 1, 2, 3]), call, admit=admit)
    assert await anext(replies) == 0
    assert await anext(replies) == 1
    await asyncio.sleep(0.01)
    assert started == [0, 1] and admitted == [0, 1]  # nothing after 2 was read or started
    gate.set()
    assert [r async for r in replies] == [2, 3]
    assert started == [0, 1, 2, 3]
