"""A Python application using ``meshd-client`` (clients/python) sends and receives through
two real daemons in two network namespaces that found each other on their shared link."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from meshd_client import MeshClient
from meshd_client.v1 import messaging_pb2 as mpb

from meshd.testing.daemon_proc import child_env
from meshd.testing.netns import NetnsLab
from tests.system.conftest import LabFactory

pytestmark = [pytest.mark.slow, pytest.mark.netns]

CHAT_EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples" / "chat.py"


async def _next_message(client: MeshClient, within: float) -> mpb.Message:
    async def first() -> mpb.Message:
        async for event in client.events():
            if event.WhichOneof("kind") == "message_received":
                return event.message_received.message
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(first(), within)


def _pair(make_lab: LabFactory) -> NetnsLab:
    lab = make_lab(["a", "b"], [("a", "b")])
    lab.start_all()
    return lab


@pytest.mark.timeout(90)
async def test_meshclient_sends_and_receives_through_two_daemons(make_lab: LabFactory) -> None:
    lab = _pair(make_lab)
    a_sock, b_sock = (str(lab.daemon(n).socket_path) for n in ("a", "b"))
    async with (
        await MeshClient.connect(a_sock, app="chat") as alice,
        await MeshClient.connect(b_sock, app="chat") as bob,
        await MeshClient.connect(b_sock, app="other") as stranger,
    ):
        a_addr = (await alice.status()).status.address
        b_addr = (await bob.status()).status.address

        sent = await alice.send(b_addr, "hi bob")
        change = await alice.wait_delivered(sent, 60)
        assert change.state == mpb.DELIVERY_STATE_DELIVERED
        got = await _next_message(bob, 10)
        assert (got.payload, got.peer, got.app_id) == (b"hi bob", a_addr, "chat")

        reply = await bob.send(a_addr, b"hi alice")
        await bob.wait_delivered(reply, 30)
        back = await _next_message(alice, 10)
        assert (back.payload, back.peer) == (b"hi alice", b_addr)

        # Another app on the same node sees none of chat's messages.
        assert await stranger.history() == []
        assert (await alice.get_message(sent)).state == mpb.DELIVERY_STATE_DELIVERED


@pytest.mark.timeout(90)
def test_chat_example_delivers_a_typed_line(make_lab: LabFactory, tmp_path: Path) -> None:
    lab = _pair(make_lab)
    b_addr = lab.meshctl_json("b", "status")["status"]["address"]
    env = child_env(tmp_path)
    env["HOME"] = str(tmp_path)  # the example keeps its cursor under ~/.cache
    env["PYTHONPATH"] = f"{CHAT_EXAMPLE.parents[1]}{os.pathsep}{env['PYTHONPATH']}"
    chat = subprocess.run(
        [sys.executable, str(CHAT_EXAMPLE), b_addr, "--socket", str(lab.daemon("a").socket_path)],
        input="hello from the chat example\n",
        capture_output=True,
        text=True,
        timeout=75,
        env=env,
    )
    assert chat.returncode == 0, chat.stderr
    assert "(delivered" in chat.stdout, chat.stdout
    history = lab.meshctl_json("b", "--app", "chat", "history")["messages"]
    assert [m["direction"] for m in history] == ["DIRECTION_INCOMING"]
    assert base64.b64decode(history[0]["payload"]) == b"hello from the chat example"
