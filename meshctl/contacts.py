"""``meshctl identity`` and ``meshctl contacts [list|show|name|trust|verify]``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from meshctl import format as fmt
from meshctl.commands import Context
from meshd.api.v1 import contacts_pb2 as cpb

ACTIONS = ("list", "show", "name", "trust", "verify")


def add_parsers(
    command: Callable[[str, str], argparse.ArgumentParser],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``identity`` and ``contacts``; ``command`` makes a top-level command and
    ``add_common`` adds the global options (--socket, --json, --app) to a parser."""
    command("identity", "this node's address, public keys and fingerprint")
    contacts = command("contacts", "pinned peers (trust on first use): list, show, name, "
                       "trust a changed key, verify a safety number")  # fmt: skip
    sub = contacts.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common(p)  # `meshctl contacts show ADDR --json` works too
        return p

    action("list", "every pinned peer (the default)")
    action("show", "one contact with its safety number").add_argument(
        "address", metavar="ADDRESS")  # fmt: skip
    name = action("name", "set a local name for a contact ('' clears it)")
    name.add_argument("address", metavar="ADDRESS")
    name.add_argument("name", metavar="NAME")
    action("trust", "accept a contact's changed key (after checking it with them)").add_argument(
        "address", metavar="ADDRESS")  # fmt: skip
    verify = action("verify", "mark verified if NUMBER is the safety number shown by both")
    verify.add_argument("address", metavar="ADDRESS")
    verify.add_argument("number", metavar="NUMBER", nargs="+",
                        help="60 digits; groups may be separate arguments")  # fmt: skip


async def identity(ctx: Context, args: argparse.Namespace) -> int:
    resp = await ctx.contacts.GetIdentity(cpb.GetIdentityRequest(), metadata=ctx.metadata)
    if ctx.json:
        ctx.print(fmt.to_json(resp))
        return 0
    ctx.print(fmt.table(("", ""), [
        ("address", resp.address),
        ("fingerprint", resp.fingerprint),
        ("signing key", resp.signing_key),
        ("exchange key", resp.exchange_key),
    ]).split("\n", 1)[1])  # fmt: skip
    return 0


async def contacts(ctx: Context, args: argparse.Namespace) -> int:
    action = args.action or "list"
    md = ctx.metadata
    if action == "list":
        resp = await ctx.contacts.ListContacts(cpb.ListContactsRequest(), metadata=md)
        ctx.print(fmt.to_json(resp) if ctx.json else contacts_table(resp.contacts))
        return 0
    if action == "show":
        c = await ctx.contacts.GetContact(cpb.GetContactRequest(address=args.address), metadata=md)
    elif action == "name":
        req = cpb.SetContactNameRequest(address=args.address, name=args.name)
        c = await ctx.contacts.SetContactName(req, metadata=md)
    elif action == "trust":
        req_t = cpb.TrustKeyChangeRequest(address=args.address)
        c = await ctx.contacts.TrustKeyChange(req_t, metadata=md)
    else:
        req_v = cpb.VerifyContactRequest(address=args.address, safety_number=" ".join(args.number))
        c = await ctx.contacts.VerifyContact(req_v, metadata=md)
    ctx.print(json.dumps({"contact": fmt.to_dict(c)}, sort_keys=True) if ctx.json
              else contact_text(c))  # fmt: skip
    return 0


def _status(c: cpb.Contact) -> str:
    if c.pending_exchange_key:
        return "KEY CHANGED"
    return "verified" if c.verified else "unverified"


def contacts_table(items: Sequence[cpb.Contact]) -> str:
    if not items:
        return "no contacts yet (peers are pinned when first seen)"
    return fmt.table(
        ("ADDRESS", "NAME", "STATUS", "FINGERPRINT", "LAST SEEN"),
        [(c.address, c.name or "-", _status(c), c.fingerprint, fmt.when(c.last_seen))
         for c in items],
    )  # fmt: skip


def contact_text(c: cpb.Contact) -> str:
    rows = [
        ("address", c.address),
        ("name", c.name or "-"),
        ("status", _status(c)),
        ("fingerprint", c.fingerprint),
        ("safety number", c.safety_number or "-"),
        ("signing key", c.signing_key),
        ("exchange key", c.exchange_key),
        ("first seen", fmt.when(c.first_seen)),
        ("last seen", fmt.when(c.last_seen)),
    ]
    if c.pending_exchange_key:
        rows.append(("refused key", c.pending_exchange_key))
        rows.append(("key changed", fmt.when(c.key_changed_at)))
    text = fmt.table(("", ""), rows).split("\n", 1)[1]
    if c.pending_exchange_key:
        text += (f"\nthis contact's key changed: check with them, then "
                 f"`meshctl contacts trust {c.address}`")  # fmt: skip
    return text
