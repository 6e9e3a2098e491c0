"""``meshctl groups create|invite|remove|leave|role|list|members|send|history``: MLS groups."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from meshctl import format as fmt
from meshctl.commands import Context
from meshd.api.v1 import groups_pb2 as gpb
from meshd.api.v1 import groups_pb2_grpc as ggrpc

_ROLES = {"member": gpb.GROUP_ROLE_MEMBER, "admin": gpb.GROUP_ROLE_ADMIN}
_ROLE_NAMES = {v: k for k, v in _ROLES.items()}


def add_parsers(
    command: Callable[[str, str], argparse.ArgumentParser],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    groups = command("groups", "MLS groups: create, invite, remove, leave, role, list, members, "
                     "send, history")  # fmt: skip
    sub = groups.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common(p)
        return p

    action("list", "groups this node is in (the default)")
    action("create", "create a group (this node is its admin)").add_argument("name", metavar="NAME")
    invite = action("invite", "add nodes to a group (admins only)")
    invite.add_argument("group", metavar="GROUP")
    invite.add_argument("addresses", metavar="ADDRESS", nargs="+")
    invite.add_argument("--admin", action="store_true", help="make them admins")
    remove = action("remove", "remove members (admins only)")
    remove.add_argument("group", metavar="GROUP")
    remove.add_argument("addresses", metavar="ADDRESS", nargs="+")
    action("leave", "leave a group").add_argument("group", metavar="GROUP")
    role = action("role", "set a member's role (admins only)")
    role.add_argument("group", metavar="GROUP")
    role.add_argument("address", metavar="ADDRESS")
    role.add_argument("role", choices=sorted(_ROLES))
    members = action("members", "members of a group with their roles")
    members.add_argument("group", metavar="GROUP")
    send = action("send", "send TEXT to every member of a group")
    send.add_argument("group", metavar="GROUP")
    send.add_argument("text", metavar="TEXT")
    hist = action("history", "this app's messages in a group (received and sent), newest first")
    hist.add_argument("group", metavar="GROUP")
    hist.add_argument("--limit", type=int, default=50, metavar="N", help="1..1000 (default 50)")


def _stub(ctx: Context) -> ggrpc.GroupsServiceStub:
    return ggrpc.GroupsServiceStub(ctx.channel)


async def groups(ctx: Context, args: argparse.Namespace) -> int:
    action = args.action or "list"
    stub, md = _stub(ctx), ctx.metadata
    if action == "list":
        resp = await stub.ListGroups(gpb.ListGroupsRequest(), metadata=md)
        ctx.print(fmt.to_json(resp) if ctx.json else groups_table(resp.groups))
        return 0
    if action == "members":
        members = await stub.ListMembers(gpb.GroupRequest(group_id=args.group), metadata=md)
        ctx.print(fmt.to_json(members) if ctx.json else members_table(members.members))
        return 0
    if action == "history":
        req = gpb.GroupHistoryRequest(group_id=args.group, limit=args.limit)
        hist = await stub.GroupHistory(req, metadata=md)
        ctx.print(fmt.to_json(hist) if ctx.json else history_table(hist.messages))
        return 0
    if action == "send":
        req_s = gpb.SendGroupMessageRequest(group_id=args.group, content=args.text.encode())
        sent = await stub.SendGroupMessage(req_s, metadata=md)
        ctx.print(fmt.to_json(sent) if ctx.json else f"sent {sent.message_id}")
        return 0
    if action == "leave":
        await stub.Leave(gpb.GroupRequest(group_id=args.group), metadata=md)
        out = {"group_id": args.group, "result": "left"}
        ctx.print(json.dumps(out, sort_keys=True) if ctx.json else f"left {args.group}")
        return 0
    if action == "create":
        group = await stub.CreateGroup(gpb.CreateGroupRequest(name=args.name), metadata=md)
    elif action == "invite":
        role = _ROLES["admin" if args.admin else "member"]
        req_i = gpb.InviteRequest(group_id=args.group, addresses=args.addresses, role=role)
        group = await stub.Invite(req_i, metadata=md)
    elif action == "remove":
        req_r = gpb.RemoveRequest(group_id=args.group, addresses=args.addresses)
        group = await stub.Remove(req_r, metadata=md)
    else:
        req_role = gpb.SetRoleRequest(group_id=args.group, address=args.address,
                                      role=_ROLES[args.role])  # fmt: skip
        group = await stub.SetRole(req_role, metadata=md)
    ctx.print(fmt.to_json(group) if ctx.json else groups_table([group]))
    return 0


def groups_table(items: Sequence[gpb.Group]) -> str:
    if not items:
        return "no groups"
    return fmt.table(
        ("GROUP", "NAME", "EPOCH", "MEMBERS", "ROLE"),
        [(g.group_id, g.name, str(g.epoch), str(g.members), _ROLE_NAMES.get(g.role, "?"))
         for g in items],
    )  # fmt: skip


def members_table(items: Sequence[gpb.GroupMember]) -> str:
    return fmt.table(("ADDRESS", "ROLE"),
                     [(m.address, _ROLE_NAMES.get(m.role, "?")) for m in items])  # fmt: skip


def history_table(items: Sequence[gpb.GroupMessage]) -> str:
    if not items:
        return "no messages"
    return fmt.table(
        ("TIME", "SENDER", "STATE", "MESSAGE"),
        [(fmt.when(m.received_at), m.sender,
          fmt.state_name(m.state) if m.state else "received",
          m.content.decode(errors="replace"))
         for m in items],
    )  # fmt: skip
