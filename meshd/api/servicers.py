"""The gRPC servicers: thin adapters from ``meshd.v1`` requests to ``NodeApi`` calls.

Errors are raised as ``MeshdError`` and mapped to statuses by ``meshd.api.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from meshd.address import NodeAddress
from meshd.api import convert
from meshd.api.caller import CallerResolver
from meshd.api.errors import status_code, status_detail
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import messaging_pb2_grpc as mgrpc
from meshd.api.v1 import node_pb2 as npb
from meshd.api.v1 import node_pb2_grpc as ngrpc
from meshd.errors import MeshdError
from meshd.node_api import MessageRecord, NodeApi

_DST_CACHE = 1024


class NodeServicer(ngrpc.NodeServiceServicer):
    def __init__(self, node: NodeApi, callers: CallerResolver) -> None:
        self._node = node
        self._callers = callers

    async def GetStatus(self, request: npb.GetStatusRequest, context: Any) -> npb.GetStatusResponse:
        caller = self._callers.caller(context)
        status = self._node.status()
        return npb.GetStatusResponse(
            status=convert.node_status(status, admin=caller.is_admin),
            caller=convert.caller_info(caller),
        )

    async def ListNeighbours(
        self, request: npb.ListNeighboursRequest, context: Any
    ) -> npb.ListNeighboursResponse:
        self._callers.caller(context)
        return npb.ListNeighboursResponse(
            neighbours=[convert.neighbour(n) for n in self._node.neighbours()]
        )

    async def ListRoutes(
        self, request: npb.ListRoutesRequest, context: Any
    ) -> npb.ListRoutesResponse:
        self._callers.caller(context)
        return npb.ListRoutesResponse(routes=[convert.route(r) for r in self._node.routes()])

    async def ListTransports(
        self, request: npb.ListTransportsRequest, context: Any
    ) -> npb.ListTransportsResponse:
        self._callers.caller(context)
        return npb.ListTransportsResponse(
            transports=[convert.transport(t) for t in self._node.transports()]
        )


class MessagingServicer(mgrpc.MessagingServiceServicer):
    def __init__(self, node: NodeApi, callers: CallerResolver) -> None:
        self._node = node
        self._callers = callers
        self._streams: set[asyncio.Task[Any]] = set()
        self._closing = False
        # Destination text -> parsed address: parsing (base32 + checksum + canonical
        # check) was ~3 % of the sending daemon's CPU at 500 msg/s; apps reuse a few.
        self._dsts: dict[str, NodeAddress] = {}

    def end_streams(self) -> None:
        """Shutting down: end every Subscribe stream now (cleanly), not after the grace."""
        self._closing = True
        for task in list(self._streams):
            task.cancel()

    def _dst(self, text: str) -> NodeAddress:
        dst = self._dsts.get(text)
        if dst is None:
            dst = convert.parse_address(text, field="dst")  # raises on bad input
            if len(self._dsts) >= _DST_CACHE:
                self._dsts.clear()
            self._dsts[text] = dst
        return dst

    async def SendMessage(
        self, request: mpb.SendMessageRequest, context: Any
    ) -> mpb.SendMessageResponse:
        caller = self._callers.caller(context)
        dst = self._dst(request.dst)
        lifetime = convert.lifetime_seconds(request)
        record = await self._node.send_message(caller, dst, request.payload, lifetime_s=lifetime)
        return _sent(record)

    async def SendMessages(
        self, requests: AsyncIterator[mpb.SendMessageRequest], context: Any
    ) -> AsyncIterator[mpb.SendMessageResponse]:
        caller = self._callers.caller(context)

        async def items() -> AsyncIterator[tuple[NodeAddress, bytes, float | None] | MeshdError]:
            async for request in requests:
                try:
                    dst = self._dst(request.dst)
                    lifetime = convert.lifetime_seconds(request)
                except MeshdError as exc:  # this item is refused, the stream goes on
                    yield exc
                    continue
                yield dst, request.payload, lifetime

        async for result in self._node.send_messages(caller, items()):
            if isinstance(result, MeshdError):
                yield mpb.SendMessageResponse(
                    error_code=status_code(result).name, error_detail=status_detail(result)
                )
            else:
                yield _sent(result)

    async def GetMessage(self, request: mpb.GetMessageRequest, context: Any) -> mpb.Message:
        caller = self._callers.caller(context)
        message_id = convert.parse_message_id(request.message_id)
        return convert.message(self._node.get_message(caller, message_id))

    async def ListHistory(
        self, request: mpb.ListHistoryRequest, context: Any
    ) -> mpb.ListHistoryResponse:
        caller = self._callers.caller(context)
        peer = convert.parse_address(request.peer, field="peer") if request.peer else None
        limit = convert.history_limit(request.limit)
        before = (
            convert.cursor_arg(request.before_cursor, field="before_cursor")
            if request.HasField("before_cursor")
            else None
        )
        records = self._node.history(caller, peer=peer, limit=limit, before_cursor=before)
        return mpb.ListHistoryResponse(messages=[convert.message(m) for m in records])

    async def Subscribe(
        self, request: mpb.SubscribeRequest, context: Any
    ) -> AsyncIterator[mpb.Event]:
        caller = self._callers.caller(context)
        after = (
            convert.cursor_arg(request.after_cursor, field="after_cursor")
            if request.HasField("after_cursor")
            else None
        )
        events = self._node.subscribe(caller, after_cursor=after)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            async for event in events:
                yield convert.event(event)
        except asyncio.CancelledError:
            if not self._closing or task is None:
                raise
            task.uncancel()  # our own end_streams(): finish the stream with OK
        finally:
            if task is not None:
                self._streams.discard(task)
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


def _sent(record: MessageRecord) -> mpb.SendMessageResponse:
    out = mpb.SendMessageResponse(
        message_id=record.message_id.hex(),
        state=convert.delivery_state(record.state),
        cursor=record.cursor or 0,
    )
    convert.set_timestamp(out.created_at, record.created_at)  # no Timestamp copied in
    return out
