"""Many calls in flight on one stream, answered in request order (the SendMessages RPC).

A unary SendMessage costs ~0.2 ms of gRPC work per call in the daemon (measured with
py-spy on the sending daemon at 800 msg/s); on one stream the per-message cost is a
fraction of that, and many sends waiting for the same group commit share it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from meshd.errors import InvalidArgument, MeshdError

_I = TypeVar("_I")
_R = TypeVar("_R")

#: Calls of one stream in flight at once: enough for several group commits' worth
#: at 1,500 msg/s; the per-destination send window bounds the mesh side anyway.
DEFAULT_IN_FLIGHT = 128


async def pipelined(
    items: AsyncIterable[_I | MeshdError],
    call: Callable[[_I], Awaitable[_R]],
    *,
    in_flight: int = DEFAULT_IN_FLIGHT,
    admit: Callable[[_I], Awaitable[None]] | None = None,
) -> AsyncIterator[_R | MeshdError]:
    """``call(item)`` for each item, up to ``in_flight`` at once; results in item order.

    A call that fails with a ``MeshdError`` yields that error in its place and the stream
    goes on; an item that is already an error (bad input the caller found) is yielded as
    is. Requests are read while earlier calls run, so a client may wait for a reply
    before sending more. When the consumer stops early, calls already started are left
    to finish (each one's outcome is the same as for an abandoned unary call).
    ``admit(item)``, if given, is awaited before the item's call starts (backpressure:
    the stream reads no further meanwhile).
    """
    if in_flight < 1:
        raise InvalidArgument("in_flight must be >= 1", field="in_flight")
    slots = asyncio.Semaphore(in_flight)
    queue: asyncio.Queue[asyncio.Future[_R] | MeshdError | None] = asyncio.Queue()
    failure: list[BaseException] = []

    async def read() -> None:
        try:
            async for item in items:
                await slots.acquire()
                if isinstance(item, MeshdError):
                    queue.put_nowait(item)
                else:
                    if admit is not None:
                        await admit(item)
                    task = asyncio.ensure_future(call(item))
                    task.add_done_callback(_retrieve)
                    queue.put_nowait(task)
        except Exception as exc:  # the request stream broke: end after what was read
            failure.append(exc)
        finally:
            queue.put_nowait(None)

    reader = asyncio.ensure_future(read())
    try:
        while (entry := await queue.get()) is not None:
            if isinstance(entry, MeshdError):
                result: _R | MeshdError = entry
            else:
                try:
                    result = await asyncio.shield(entry)
                except MeshdError as exc:
                    result = exc
            slots.release()
            yield result
        if failure:
            raise failure[0]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Mark the outcome as seen even when nobody awaits it any more (consumer gone).
    if not task.cancelled():
        task.exception()
