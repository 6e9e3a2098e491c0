"""meshd-client's MeshClient sends and receives through two real Nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from meshd_client import DeliveryFailed, MeshClient, MeshClientError
from meshd_client.v1 import messaging_pb2 as mpb

from tests.integration.api_harness import node_pair

pytestmark = pytest.mark.timeout(60)


async def test_send_receive_wait_delivered(tmp_path: Path) -> None:
    async with (
        node_pair(tmp_path) as pair,
        await MeshClient.connect(pair.a.socket, app="chat") as alice,
        await MeshClient.connect(pair.b.socket, app="chat") as bob,
    ):
        status = await bob.status()
        assert status.status.address == pair.b.address and status.caller.app_id == "chat"
        inbox = bob.events()
        message_id = await alice.send(pair.b.address, "hello bob")
        change = await alice.wait_delivered(message_id, timeout=20)
        assert change.state == mpb.DELIVERY_STATE_DELIVERED
        async with asyncio.timeout(20):
            async for event in inbox:
                if event.WhichOneof("kind") == "message_received":
                    break
        await inbox.aclose()
        got = event.message_received.message
        assert (got.payload, got.peer, got.message_id) == (
            b"hello bob", pair.a.address, message_id
        )  # fmt: skip
        # Already delivered: answered from the stored state, no event needed.
        again = await alice.wait_delivered(message_id, timeout=5)
        assert again.state == mpb.DELIVERY_STATE_DELIVERED
        # Bob answers; Alice resumes her stream after the cursor she last saw.
        reply_id = await bob.send(pair.a.address, b"\x00binary\xff")
        await bob.wait_delivered(reply_id, timeout=20)
        history = await alice.history(peer=pair.b.address)
        assert [m.payload for m in history] == [b"\x00binary\xff", b"hello bob"]


async def test_errors(tmp_path: Path) -> None:
    with pytest.raises(MeshClientError, match="cannot connect to meshd at"):
        await MeshClient.connect(str(tmp_path / "none.sock"), timeout=0.3)
    async with node_pair(tmp_path) as pair, await MeshClient.connect(pair.a.socket) as c:
        with pytest.raises(MeshClientError) as info:
            await c.send("not-an-address", b"x")
        assert info.value.code == "INVALID_ARGUMENT" and str(info.value).startswith("dst: ")
        pair.wire.cut()
        message_id = await c.send(pair.b.address, b"x", lifetime=0.3)
        with pytest.raises((DeliveryFailed, TimeoutError)) as failed:
            await c.wait_delivered(message_id, timeout=10)
        # A lifetime this short ends in FAILED rather than a client-side timeout.
        assert isinstance(failed.value, DeliveryFailed), failed.value
        assert failed.value.message_id == message_id
