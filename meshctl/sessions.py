"""``meshctl connect``, ``meshctl requests [list|accept|reject|cancel]``, ``meshctl policy``
and ``meshctl session``: 1:1 end-to-end sessions and connection requests."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from meshctl import format as fmt
from meshctl.commands import Context
from meshd.api.v1 import sessions_pb2 as spb
from meshd.api.v1 import sessions_pb2_grpc as sgrpc

_DIRECTIONS = {"incoming": spb.REQUEST_DIRECTION_INCOMING,
               "outgoing": spb.REQUEST_DIRECTION_OUTGOING}  # fmt: skip
_POLICIES = {"anyone": spb.ACCEPT_FROM_ANYONE, "contacts": spb.ACCEPT_FROM_CONTACTS}


def add_parsers(
    command: Callable[[str, str], argparse.ArgumentParser],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    connect = command("connect", "send a connection request (with an optional first message)")
    connect.add_argument("address", metavar="ADDRESS")
    connect.add_argument("text", metavar="TEXT", nargs="?", default="",
                         help="first message, at most 4096 bytes, delivered on accept")  # fmt: skip
    requests = command("requests", "pending connection requests: list, accept, reject, cancel")
    sub = requests.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common(p)
        return p

    lst = action("list", "incoming and outgoing requests (the default)")
    lst.add_argument("--direction", choices=sorted(_DIRECTIONS), default=None)
    action("accept", "accept ADDRESS's incoming request").add_argument("address",
                                                                        metavar="ADDRESS")
    action("reject", "reject ADDRESS's incoming request").add_argument("address",
                                                                        metavar="ADDRESS")
    action("cancel", "withdraw this node's request to ADDRESS").add_argument("address",
                                                                              metavar="ADDRESS")
    policy = command("policy", "who may open a session: show, or set anyone|contacts")
    policy.add_argument("accept_from", metavar="anyone|contacts", nargs="?",
                        choices=sorted(_POLICIES))  # fmt: skip
    session = command("session", "the 1:1 end-to-end session with a node")
    session.add_argument("address", metavar="ADDRESS")


def _stub(ctx: Context) -> sgrpc.SessionsServiceStub:
    return ctx.sessions


async def connect(ctx: Context, args: argparse.Namespace) -> int:
    req = spb.ConnectRequest(address=args.address, text=args.text.encode())
    resp = await _stub(ctx).Connect(req, metadata=ctx.metadata)
    if ctx.json:
        ctx.print(json.dumps({"request": fmt.to_dict(resp)}, sort_keys=True))
    else:
        ctx.print(f"connection request sent to {resp.peer} (expires {fmt.when(resp.expires_at)})")
    return 0


async def requests(ctx: Context, args: argparse.Namespace) -> int:
    action = args.action or "list"
    stub, md = _stub(ctx), ctx.metadata
    if action == "list":
        direction = _DIRECTIONS.get(getattr(args, "direction", None) or "")
        req = spb.ListRequestsRequest()
        if direction is not None:
            req.direction = direction
        resp = await stub.ListRequests(req, metadata=md)
        ctx.print(fmt.to_json(resp) if ctx.json else requests_table(resp.requests))
        return 0
    peer = spb.PeerRequest(address=args.address)
    if action == "accept":
        await stub.AcceptRequest(peer, metadata=md)
    elif action == "reject":
        await stub.RejectRequest(peer, metadata=md)
    else:
        await stub.CancelRequest(peer, metadata=md)
    done = {"accept": "accepted", "reject": "rejected", "cancel": "cancelled"}[action]
    if ctx.json:
        ctx.print(json.dumps({"address": args.address, "result": done}, sort_keys=True))
    else:
        ctx.print(f"request {done}: {args.address}")
    return 0


async def policy(ctx: Context, args: argparse.Namespace) -> int:
    stub = _stub(ctx)
    if args.accept_from:
        req = spb.SetPolicyRequest(accept_from=_POLICIES[args.accept_from])
        resp = await stub.SetPolicy(req, metadata=ctx.metadata)
    else:
        resp = await stub.GetPolicy(spb.GetPolicyRequest(), metadata=ctx.metadata)
    name = {v: k for k, v in _POLICIES.items()}.get(resp.accept_from, "unspecified")
    ctx.print(json.dumps({"accept_from": name}) if ctx.json else f"accept_from: {name}")
    return 0


async def session(ctx: Context, args: argparse.Namespace) -> int:
    resp = await _stub(ctx).GetSession(spb.PeerRequest(address=args.address),
                                       metadata=ctx.metadata)  # fmt: skip
    if ctx.json:
        ctx.print(json.dumps({"session": fmt.to_dict(resp)}, sort_keys=True))
        return 0
    ctx.print(fmt.table(("", ""), [
        ("peer", resp.peer),
        ("group id", resp.group_id),
        ("epoch", str(resp.epoch)),
        ("established", "yes" if resp.established else "no (waiting for the peer)"),
    ]).split("\n", 1)[1])  # fmt: skip
    return 0


def requests_table(items: Sequence[spb.ConnectionRequest]) -> str:
    if not items:
        return "no pending connection requests"
    names = {v: k for k, v in _DIRECTIONS.items()}
    return fmt.table(
        ("PEER", "DIRECTION", "HELD", "CREATED", "EXPIRES"),
        [(r.peer, names.get(r.direction, "?"), str(r.held_messages), fmt.when(r.created_at),
          fmt.when(r.expires_at)) for r in items],
    )  # fmt: skip

