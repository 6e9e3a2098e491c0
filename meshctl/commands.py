"""meshctl's commands: each takes the parsed arguments and an open channel, returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TextIO

import grpc

from meshctl import format as fmt
from meshd.api.v1 import contacts_pb2_grpc as cgrpc
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import messaging_pb2_grpc as mgrpc
from meshd.api.v1 import node_pb2 as npb
from meshd.api.v1 import node_pb2_grpc as ngrpc
from meshd.api.v1 import sessions_pb2_grpc as sgrpc


class CommandFailed(Exception):
    """A clear one-line reason to exit non-zero (printed as ``meshctl: <reason>``)."""


class Context:
    """What every command needs: stubs, call metadata, output mode and streams."""

    def __init__(
        self, channel: grpc.aio.Channel, args: argparse.Namespace, out: TextIO
    ) -> None:
        self.node = ngrpc.NodeServiceStub(channel)
        self.messaging = mgrpc.MessagingServiceStub(channel)
        self.contacts = cgrpc.ContactsServiceStub(channel)
        self.sessions = sgrpc.SessionsServiceStub(channel)
        self.channel = channel  # for stubs made by command modules (meshctl/groups.py)
        self.metadata = (("meshd-app", args.app),)
        self.json: bool = args.json
        self.out = out

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


async def status(ctx: Context, args: argparse.Namespace) -> int:
    resp = await ctx.node.GetStatus(npb.GetStatusRequest(), metadata=ctx.metadata)
    transports = await ctx.node.ListTransports(npb.ListTransportsRequest(), metadata=ctx.metadata)
    if ctx.json:
        doc = fmt.to_dict(resp)
        doc["transports"] = [fmt.to_dict(t) for t in transports.transports]
        ctx.print(json.dumps(doc, sort_keys=True))
    else:
        ctx.print(fmt.status_text(resp, transports.transports))
    return 0


async def peers(ctx: Context, args: argparse.Namespace) -> int:
    resp = await ctx.node.ListNeighbours(npb.ListNeighboursRequest(), metadata=ctx.metadata)
    now = time.time()
    ctx.print(fmt.to_json(resp) if ctx.json else fmt.neighbours_table(resp.neighbours, now=now))
    return 0


async def routes(ctx: Context, args: argparse.Namespace) -> int:
    resp = await ctx.node.ListRoutes(npb.ListRoutesRequest(), metadata=ctx.metadata)
    ctx.print(fmt.to_json(resp) if ctx.json else fmt.routes_table(resp.routes, now=time.time()))
    return 0


async def history(ctx: Context, args: argparse.Namespace) -> int:
    req = mpb.ListHistoryRequest(peer=args.peer or "", limit=args.limit)
    resp = await ctx.messaging.ListHistory(req, metadata=ctx.metadata)
    ctx.print(fmt.to_json(resp) if ctx.json else fmt.history_table(resp.messages))
    return 0


async def watch(ctx: Context, args: argparse.Namespace) -> int:
    req = mpb.SubscribeRequest()
    if args.from_cursor is not None:
        req.after_cursor = args.from_cursor
    stream = ctx.messaging.Subscribe(req, metadata=ctx.metadata)
    async for event in stream:
        ctx.print(fmt.to_json(event) if ctx.json else fmt.event_line(event))
    raise CommandFailed("meshd closed the event stream (stopping?)")


async def send(ctx: Context, args: argparse.Namespace) -> int:
    req = mpb.SendMessageRequest(dst=args.address, payload=args.text.encode("utf-8"))
    if not args.wait:
        resp = await ctx.messaging.SendMessage(req, metadata=ctx.metadata)
        if ctx.json:
            ctx.print(fmt.to_json(resp))
        else:
            ctx.print(f"{resp.message_id}  {fmt.state_name(resp.state)}")
        return 0
    return await _send_and_wait(ctx, req, args.timeout)


async def _send_and_wait(ctx: Context, req: mpb.SendMessageRequest, wait_s: float) -> int:
    """Send, then follow the event log from the message's own cursor: every later state
    change is in the durable log, so none can slip past between the two calls (and no
    older history is replayed)."""
    deadline = time.monotonic() + wait_s
    resp = await ctx.messaging.SendMessage(req, metadata=ctx.metadata, timeout=wait_s)
    if not ctx.json:
        print(f"{resp.message_id}  {fmt.state_name(resp.state)}", file=sys.stderr, flush=True)
    sub = mpb.SubscribeRequest()
    if resp.cursor:
        sub.after_cursor = resp.cursor - 1
    stream = ctx.messaging.Subscribe(sub, metadata=ctx.metadata)
    try:
        final = await asyncio.wait_for(
            _final_state(ctx, stream, resp.message_id), max(0.0, deadline - time.monotonic())
        )
    except TimeoutError:
        raise CommandFailed(
            f"no delivery confirmation for {resp.message_id} within {wait_s:g} s"
            " (meshd keeps it queued and retries)"
        ) from None
    finally:
        stream.cancel()
    if ctx.json:
        ctx.print(fmt.to_json(final))
    if final.state == mpb.DELIVERY_STATE_DELIVERED:
        if not ctx.json:
            ctx.print(f"{final.message_id}  delivered")
        return 0
    if final.reason == _AWAITING:
        raise CommandFailed(f"message {final.message_id} reached {final.dst} but waits there, "
                            "unopened, until it accepts the connection request (meshd reports "
                            "it delivered then)")  # fmt: skip
    raise CommandFailed(f"message {final.message_id} failed: {final.reason or 'no reason given'}")


_AWAITING = "awaiting acceptance"


async def _final_state(
    ctx: Context, stream: grpc.aio.UnaryStreamCall, message_id: str
) -> mpb.DeliveryStateChanged:
    async for event in stream:
        if (event.WhichOneof("kind") == "session" and event.session.detail == message_id
                and event.session.kind == mpb.SESSION_EVENT_KIND_AWAITING_ACCEPTANCE):
            # The peer (contacts only) holds it unopened as a connection request.
            return mpb.DeliveryStateChanged(message_id=message_id, dst=event.session.peer,
                                            state=mpb.DELIVERY_STATE_RELAYED,
                                            reason=_AWAITING)  # fmt: skip
        if event.WhichOneof("kind") != "delivery_state":
            continue
        change: mpb.DeliveryStateChanged = event.delivery_state
        if change.message_id == message_id and change.state in (
            mpb.DELIVERY_STATE_DELIVERED,
            mpb.DELIVERY_STATE_FAILED,
        ):
            return change
    # The stream ended (daemon stopping): ask once more before giving up.
    msg = await ctx.messaging.GetMessage(
        mpb.GetMessageRequest(message_id=message_id), metadata=ctx.metadata
    )
    if msg.state in (mpb.DELIVERY_STATE_DELIVERED, mpb.DELIVERY_STATE_FAILED):
        return mpb.DeliveryStateChanged(
            message_id=message_id, dst=msg.peer, state=msg.state, reason=msg.reason
        )
    raise CommandFailed("meshd closed the event stream before the message was delivered")
