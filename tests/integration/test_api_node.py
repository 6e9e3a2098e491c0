"""The gRPC API against real Nodes linked in memory, over real Unix sockets."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import node_pb2 as npb
from tests.integration.api_harness import api, next_event, node_pair

pytestmark = pytest.mark.timeout(60)


async def test_send_receive_and_delivery(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket, "chat") as a, api(
        pair.b.socket, "chat"
    ) as b:
        b_events = b.msg.Subscribe(mpb.SubscribeRequest(), metadata=b.md)
        a_events = a.msg.Subscribe(mpb.SubscribeRequest(), metadata=a.md)
        sent = await a.msg.SendMessage(
            mpb.SendMessageRequest(dst=pair.b.address, payload=b"hello b"), metadata=a.md
        )
        assert len(sent.message_id) == 16 and sent.state == mpb.DELIVERY_STATE_QUEUED
        assert sent.cursor > 0
        async with asyncio.timeout(20):
            rx = await next_event(b_events, "message_received", message_id=sent.message_id)
            done = await next_event(a_events, "delivery_state", message_id=sent.message_id)
            while done.delivery_state.state != mpb.DELIVERY_STATE_DELIVERED:
                assert done.delivery_state.state != mpb.DELIVERY_STATE_FAILED
                done = await next_event(a_events, "delivery_state", message_id=sent.message_id)
        b_events.cancel()
        a_events.cancel()
        got = rx.message_received.message
        assert (got.payload, got.peer, got.app_id) == (b"hello b", pair.a.address, "chat")
        assert got.direction == mpb.DIRECTION_INCOMING and got.HasField("hops")  # 0 relays
        assert done.delivery_state.dst == pair.b.address

        stored = await a.msg.GetMessage(
            mpb.GetMessageRequest(message_id=sent.message_id), metadata=a.md
        )
        assert stored.state == mpb.DELIVERY_STATE_DELIVERED and stored.payload == b"hello b"
        hist = await b.msg.ListHistory(
            mpb.ListHistoryRequest(peer=pair.a.address, limit=10), metadata=b.md
        )
        assert [m.message_id for m in hist.messages] == [sent.message_id]


async def test_one_app_never_sees_another_apps_messages(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket, "app-x") as ax, api(
        pair.b.socket, "app-x"
    ) as bx, api(pair.b.socket, "app-y") as by, api(pair.a.socket, "app-y") as ay:
        y_stream = by.msg.Subscribe(mpb.SubscribeRequest(), metadata=by.md)
        x_stream = bx.msg.Subscribe(mpb.SubscribeRequest(), metadata=bx.md)
        x_sent = await ax.msg.SendMessage(
            mpb.SendMessageRequest(dst=pair.b.address, payload=b"for x"), metadata=ax.md
        )
        y_sent = await ay.msg.SendMessage(
            mpb.SendMessageRequest(dst=pair.b.address, payload=b"for y"), metadata=ay.md
        )
        async with asyncio.timeout(20):
            x_rx = await next_event(x_stream, "message_received")
            y_rx = await next_event(y_stream, "message_received")
        x_stream.cancel()
        y_stream.cancel()
        # Each app's first message is its own: the other app's was never in its stream.
        assert x_rx.message_received.message.message_id == x_sent.message_id
        assert y_rx.message_received.message.message_id == y_sent.message_id
        assert x_rx.message_received.message.payload == b"for x"
        y_hist = await by.msg.ListHistory(mpb.ListHistoryRequest(), metadata=by.md)
        assert [m.payload for m in y_hist.messages] == [b"for y"]
        # Asking for another app's message by id: not found (no existence leak).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ay.msg.GetMessage(
                mpb.GetMessageRequest(message_id=x_sent.message_id), metadata=ay.md
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_subscribe_resumes_from_a_cursor_after_reconnect(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket, "chat") as a:
        async with api(pair.b.socket, "chat") as b:
            stream = b.msg.Subscribe(mpb.SubscribeRequest(), metadata=b.md)
            await a.msg.SendMessage(
                mpb.SendMessageRequest(dst=pair.b.address, payload=b"one"), metadata=a.md
            )
            async with asyncio.timeout(20):
                first = await next_event(stream, "message_received")
            stream.cancel()
        # B's app is gone (channel closed); two more arrive meanwhile.
        ids = []
        for text in (b"two", b"three"):
            sent = await a.msg.SendMessage(
                mpb.SendMessageRequest(dst=pair.b.address, payload=text), metadata=a.md
            )
            ids.append(sent.message_id)
        async with api(pair.b.socket, "chat") as b2:
            resumed = b2.msg.Subscribe(
                mpb.SubscribeRequest(after_cursor=first.cursor), metadata=b2.md
            )
            async with asyncio.timeout(20):
                got = [await next_event(resumed, "message_received") for _ in ids]
            resumed.cancel()
        assert [e.message_received.message.payload for e in got] == [b"two", b"three"]
        assert [e.message_received.message.message_id for e in got] == ids
        assert first.cursor < got[0].cursor < got[1].cursor


async def test_bad_requests_name_the_field(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket) as a:
        addr = pair.b.address
        typo = addr[:5] + ("a" if addr[5] != "a" else "b") + addr[6:]

        async def fails(call: object) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call  # type: ignore[misc]
            return info.value.code(), info.value.details() or ""

        send = a.msg.SendMessage
        code, detail = await fails(send(mpb.SendMessageRequest(dst=typo), metadata=a.md))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert detail.startswith("dst: checksum mismatch")
        code, detail = await fails(send(mpb.SendMessageRequest(dst=""), metadata=a.md))
        assert (code, detail.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "dst")
        code, detail = await fails(send(mpb.SendMessageRequest(dst=pair.a.address), metadata=a.md))
        assert (code, detail.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "dst")
        bad_app = (("meshd-app", "Not Valid"),)
        code, detail = await fails(send(mpb.SendMessageRequest(dst=addr), metadata=bad_app))
        assert (code, detail.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "meshd-app")
        code, detail = await fails(
            a.msg.ListHistory(mpb.ListHistoryRequest(limit=5000), metadata=a.md)
        )
        assert (code, detail.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "limit")
        code, detail = await fails(
            a.msg.GetMessage(mpb.GetMessageRequest(message_id="zz"), metadata=a.md)
        )
        assert (code, detail.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "message_id")
        code, _ = await fails(
            a.msg.GetMessage(mpb.GetMessageRequest(message_id="00" * 8), metadata=a.md)
        )
        assert code == grpc.StatusCode.NOT_FOUND
        # The server is still fine after all that.
        status = await a.node.GetStatus(npb.GetStatusRequest(), metadata=a.md)
        assert status.status.address == pair.a.address


async def test_status_and_lists_with_kernel_verified_caller(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket, "tool") as a:
        resp = await a.node.GetStatus(npb.GetStatusRequest(), metadata=a.md)
        assert resp.caller.pid == os.getpid()
        assert (resp.caller.uid, resp.caller.gid) == (os.getuid(), os.getgid())
        assert resp.caller.app_id == "tool"
        assert resp.status.address == pair.a.address and resp.status.version
        if resp.caller.is_admin:
            assert resp.status.state_dir == str(tmp_path / "a")
        async with asyncio.timeout(10):
            while not (await a.node.ListNeighbours(npb.ListNeighboursRequest())).neighbours:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        neighbours = (await a.node.ListNeighbours(npb.ListNeighboursRequest())).neighbours
        assert [n.address for n in neighbours] == [pair.b.address]
        assert neighbours[0].kind == npb.LINK_KIND_MEMORY
        transports = (await a.node.ListTransports(npb.ListTransportsRequest())).transports
        assert [(t.name, t.state) for t in transports] == [
            ("memory", npb.TRANSPORT_STATE_RUNNING)
        ]
        routes = await a.node.ListRoutes(npb.ListRoutesRequest())
        assert all(r.dst and r.next_hop for r in routes.routes)
