"""A small async gRPC helper for the system tests: one daemon's API, scoped to an app."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType

import grpc

from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import messaging_pb2_grpc as mgrpc
from meshd.api.v1 import node_pb2 as npb
from meshd.api.v1 import node_pb2_grpc as ngrpc

APP = "systest"


class Api:
    """``async with Api(socket_path) as api:`` — stubs plus the calls the tests need."""

    def __init__(self, socket_path: str, *, app: str = APP) -> None:
        self.socket_path = socket_path
        self.metadata = (("meshd-app", app),)
        self.channel = grpc.aio.insecure_channel(f"unix:{socket_path}")
        self.node = ngrpc.NodeServiceStub(self.channel)
        self.messaging = mgrpc.MessagingServiceStub(self.channel)

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.channel.close(None)

    async def address(self) -> str:
        resp = await self.node.GetStatus(npb.GetStatusRequest(), metadata=self.metadata, timeout=5)
        return str(resp.status.address)

    async def send(self, dst: str, payload: bytes, *, rpc_timeout: float = 10.0) -> str:
        """SendMessage; returns the message id once the daemon has stored it."""
        resp = await self.messaging.SendMessage(
            mpb.SendMessageRequest(dst=dst, payload=payload),
            metadata=self.metadata,
            timeout=rpc_timeout,
        )
        return str(resp.message_id)

    async def history(self, *, limit: int = 1000) -> list[mpb.Message]:
        resp = await self.messaging.ListHistory(
            mpb.ListHistoryRequest(limit=limit), metadata=self.metadata, timeout=10
        )
        return list(resp.messages)

    async def incoming(self) -> list[mpb.Message]:
        return [m for m in await self.history() if m.direction == mpb.DIRECTION_INCOMING]

    async def get(self, message_id: str) -> mpb.Message:
        msg: mpb.Message = await self.messaging.GetMessage(
            mpb.GetMessageRequest(message_id=message_id), metadata=self.metadata, timeout=5
        )
        return msg

    async def route_hops(self, dst: str) -> int | None:
        resp = await self.node.ListRoutes(
            npb.ListRoutesRequest(), metadata=self.metadata, timeout=5
        )
        for route in resp.routes:
            if route.dst == dst:
                return int(route.hops)
        return None

    async def events(
        self,
        done: Callable[[list[mpb.Event]], bool],
        *,
        within: float,
        linger: float = 0.0,
        kinds: tuple[str, ...] = ("message_received",),
    ) -> list[mpb.Event]:
        """Events of ``kinds`` from the start of the log until ``done(events)`` holds or
        ``within`` s; then keep listening ``linger`` s more (to catch duplicates)."""
        got: list[mpb.Event] = []
        stream = self.messaging.Subscribe(mpb.SubscribeRequest(), metadata=self.metadata)
        deadline = time.monotonic() + within
        finished_at: float | None = None

        async def pump() -> None:
            nonlocal finished_at, deadline
            async for event in stream:
                if event.WhichOneof("kind") in kinds:
                    got.append(event)
                if finished_at is None and done(got):
                    finished_at = time.monotonic()
                    deadline = min(deadline, finished_at + linger)
                    if linger <= 0:
                        return

        task = asyncio.ensure_future(pump())
        try:
            while not task.done() and time.monotonic() < deadline:
                await asyncio.wait({task}, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        finally:
            stream.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task
        return got


def payloads(events: list[mpb.Event]) -> list[bytes]:
    return [e.message_received.message.payload for e in events if e.HasField("message_received")]


async def wait_for(
    check: Callable[[], object], *, within: float, interval: float = 0.2, what: str
) -> None:
    """Poll an async ``check`` until it returns a truthy value, or fail naming ``what``."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        result = check()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within} s waiting for {what} (last: {last!r})")
