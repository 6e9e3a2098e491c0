"""``meshctl groups ...`` against two real Nodes serving the API (GroupsService)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from meshctl.__main__ import amain
from tests.integration.api_harness import node_pair

pytestmark = pytest.mark.timeout(60)


async def ctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await amain(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def test_meshctl_groups_end_to_end(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        a, b = pair.a.socket, pair.b.socket
        code, out, err = await ctl("--socket", a, "--json", "groups", "create", "friends")
        assert (code, err) == (0, ""), err
        group = json.loads(out)
        gid = group["group_id"]
        assert group["name"] == "friends" and group["role"] == "GROUP_ROLE_ADMIN"
        code, out, err = await ctl("--socket", a, "--json", "groups", "invite", gid, pair.b.address)
        assert code == 0, err
        assert json.loads(out)["members"] == 2
        for _ in range(200):
            code, out, _ = await ctl("--socket", b, "--json", "groups", "list")
            if json.loads(out).get("groups"):
                break
            await asyncio.sleep(0.05)
        assert json.loads(out)["groups"][0]["group_id"] == gid
        code, out, _ = await ctl("--socket", b, "groups", "members", gid)
        assert code == 0 and pair.a.address in out and "admin" in out
        code, out, err = await ctl("--socket", a, "groups", "send", gid, "hello group")
        assert code == 0 and out.startswith("sent "), err
        for _ in range(200):
            code, out, _ = await ctl("--socket", b, "--json", "groups", "history", gid)
            if json.loads(out).get("messages"):
                break
            await asyncio.sleep(0.05)
        msg = json.loads(out)["messages"][0]
        assert msg["sender"] == pair.a.address
        assert msg.get("state", "DELIVERY_STATE_UNSPECIFIED") == "DELIVERY_STATE_UNSPECIFIED"
        # The sender's own message: in its group history (aggregate state) and its
        # history (with the group), and the receiver's history names the group too.
        for _ in range(200):
            code, out, _ = await ctl("--socket", a, "--json", "groups", "history", gid)
            mine = json.loads(out)["messages"]
            if mine and mine[0].get("state") == "DELIVERY_STATE_DELIVERED":
                break
            await asyncio.sleep(0.05)
        assert mine[0]["sender"] == pair.a.address and mine[0]["message_id"] == msg["message_id"]
        assert mine[0]["state"] == "DELIVERY_STATE_DELIVERED"
        code, out, _ = await ctl("--socket", a, "groups", "history", gid)
        assert "delivered" in out and "hello group" in out
        code, out, _ = await ctl("--socket", a, "--json", "history")
        sent = json.loads(out)["messages"][0]
        assert (sent["group_id"], sent["direction"]) == (gid, "DIRECTION_OUTGOING")
        code, out, _ = await ctl("--socket", a, "history")
        assert "GROUP" in out and gid[:16] in out and "(all members)" in out
        code, out, _ = await ctl("--socket", b, "--json", "history")
        got = json.loads(out)["messages"][0]
        assert (got["group_id"], got["peer"]) == (gid, pair.a.address)
        code, out, err = await ctl("--socket", b, "groups", "remove", gid, pair.a.address)
        assert code != 0 and "admin" in err  # b is a member
        code, out, err = await ctl("--socket", a, "groups", "role", gid, pair.b.address, "admin")
        assert code == 0, err
        code, out, err = await ctl("--socket", a, "groups", "history", "zz")
        assert code != 0 and "group_id" in err
        code, out, err = await ctl("--socket", a, "--json", "groups", "leave", gid)
        assert code == 0 and json.loads(out)["result"] == "left", err  # b is admin now
        code, out, _ = await ctl("--socket", a, "groups", "list")
        assert out.strip() == "no groups"
