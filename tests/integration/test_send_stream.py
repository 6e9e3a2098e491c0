"""SendMessages: many messages on one stream through two real Nodes (MeshClient.send_many)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from meshd_client import MeshClient
from meshd_client.v1 import messaging_pb2 as mpb

from tests.integration.api_harness import node_pair

pytestmark = pytest.mark.timeout(60)


async def test_send_many_in_order_with_a_refused_item_in_place(tmp_path: Path) -> None:
    async with (
        node_pair(tmp_path) as pair,
        await MeshClient.connect(pair.a.socket, app="chat") as alice,
        await MeshClient.connect(pair.b.socket, app="chat") as bob,
    ):
        inbox = bob.events()
        items: list[tuple[str, bytes | str]] = [(pair.b.address, b"m%03d" % i) for i in range(60)]
        items.insert(30, ("not-an-address", b"refused"))
        responses = await alice.send_many(items)
        assert len(responses) == 61
        refused = responses.pop(30)
        assert refused.error_code == "INVALID_ARGUMENT" and not refused.message_id
        assert refused.error_detail.startswith("dst: ")
        assert all(not r.error_code and r.message_id for r in responses)
        assert len({r.message_id for r in responses}) == 60
        # Each response came once its message was stored: the history has all 60, and
        # they are the same ids, in the order sent.
        history = await alice.history(peer=pair.b.address, limit=100)
        by_payload = {m.payload: m.message_id for m in history}
        assert [by_payload[b"m%03d" % i] for i in range(60)] == [r.message_id for r in responses]
        got: set[bytes] = set()
        async with asyncio.timeout(30):
            async for event in inbox:
                if event.WhichOneof("kind") == "message_received":
                    got.add(event.message_received.message.payload)
                    if len(got) == 60:
                        break
        await inbox.aclose()
        assert got == {b"m%03d" % i for i in range(60)}


async def test_send_many_streams_from_an_async_source_and_checks_lifetime(
    tmp_path: Path,
) -> None:
    async with node_pair(tmp_path) as pair, await MeshClient.connect(pair.a.socket) as c:

        async def source() -> AsyncIterator[tuple[str, str]]:
            for i in range(5):
                yield pair.b.address, f"text {i}"

        responses = await c.send_many(source(), lifetime=60)
        assert [r.state for r in responses] == [mpb.DELIVERY_STATE_QUEUED] * 5
        bad = await c.send_many([(pair.b.address, b"x")], lifetime=-1)
        assert bad[0].error_code == "INVALID_ARGUMENT"
        assert bad[0].error_detail.startswith("lifetime")
