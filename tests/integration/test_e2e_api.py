"""meshctl connect/requests/policy/session against real Nodes serving the API in-process."""

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


async def until_json(within: float, *argv: str) -> dict[str, object]:
    """Run ``meshctl --json ARGV`` until its output is a non-empty document."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        code, out, err = await ctl(*argv)
        assert code == 0, err
        doc = json.loads(out)
        if doc:
            return doc  # type: ignore[no-any-return]
        if loop.time() > end:
            raise AssertionError(f"{argv}: still empty")
        await asyncio.sleep(0.05)


async def test_policy_connect_accept_session_and_watch(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        a, b = pair.a, pair.b
        code, out, _ = await ctl("--socket", b.socket, "policy")
        assert (code, out.strip()) == (0, "accept_from: anyone")
        code, out, _ = await ctl("--socket", b.socket, "--json", "policy", "contacts")
        assert json.loads(out) == {"accept_from": "contacts"}
        with pytest.raises(SystemExit):  # argparse: invalid choice
            await ctl("--socket", b.socket, "policy", "nobody")

        code, out, err = await ctl("--socket", a.socket, "--json", "connect", b.address, "hi b")
        assert code == 0, err
        assert json.loads(out)["request"]["direction"] == "REQUEST_DIRECTION_OUTGOING"
        code, _, err = await ctl("--socket", a.socket, "connect", b.address)
        assert code == 1 and "already pending" in err

        doc = await until_json(10, "--socket", b.socket, "--json", "requests", "list")
        reqs = doc["requests"]
        assert isinstance(reqs, list) and len(reqs) == 1
        assert reqs[0]["peer"] == a.address and reqs[0]["held_messages"] == 1
        code, out, _ = await ctl("--socket", b.socket, "requests")
        assert "incoming" in out and a.address in out
        code, out, _ = await ctl("--socket", b.socket, "requests", "list", "--direction",
                                 "outgoing", "--json")  # fmt: skip
        assert code == 0 and not json.loads(out).get("requests")
        code, out, err = await ctl("--socket", b.socket, "requests", "accept", a.address)
        assert (code, out.strip()) == (0, f"request accepted: {a.address}"), err

        doc = await until_json(10, "--socket", b.socket, "--json", "history")
        assert doc["messages"][0]["peer"] == a.address  # type: ignore[index]
        for _ in range(200):
            code, out, _ = await ctl("--socket", a.socket, "--json", "session", b.address)
            if code == 0 and json.loads(out)["session"].get("established"):
                break
            await asyncio.sleep(0.05)
        session = json.loads(out)["session"]
        assert session["established"] and len(session["group_id"]) == 32
        code, out, _ = await ctl("--socket", a.socket, "session", b.address)
        assert "established" in out and "yes" in out
        code, _, err = await ctl("--socket", a.socket, "requests", "reject", b.address)
        assert code == 1 and "no incoming request" in err

        # The session events are in the watch stream as readable lines.
        out_lines = io.StringIO()
        watch = asyncio.ensure_future(amain(["--socket", a.socket, "watch"], out=out_lines,
                                            err=io.StringIO()))  # fmt: skip
        for _ in range(100):
            if "connection accepted" in out_lines.getvalue():
                break
            await asyncio.sleep(0.05)
        watch.cancel()
        assert f"connection accepted {b.address}" in out_lines.getvalue()


async def test_send_wait_to_a_contacts_only_node_says_the_message_awaits_acceptance(
    tmp_path: Path,
) -> None:
    async with node_pair(tmp_path) as pair:
        a, b = pair.a, pair.b
        code, _, err = await ctl("--socket", b.socket, "policy", "contacts")
        assert code == 0, err
        code, out, err = await ctl("--socket", a.socket, "send", b.address, "hello?", "--wait",
                                   "--timeout", "20")  # fmt: skip
        assert code == 1 and "until it accepts the connection request" in err, (out, err)
        code, out, err = await ctl("--socket", b.socket, "requests", "accept", a.address)
        assert code == 0, err
        # Once accepted the message shows delivered; the next send --wait just works.
        code, out, err = await ctl("--socket", a.socket, "send", b.address, "thanks", "--wait",
                                   "--timeout", "20")  # fmt: skip
        assert code == 0 and "delivered" in out, err
