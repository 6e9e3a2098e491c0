"""The API server's plumbing: socket files, health, reflection, caller scoping, crashes."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import grpc
import pytest
import structlog.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshd.api.server import serve
from meshd.api.v1 import node_pb2 as npb
from meshd.api.v1 import node_pb2_grpc as ngrpc
from meshd.errors import FailedPrecondition
from meshd.node import Node
from meshd.router.types import RouteInfo
from tests.integration.api_harness import api, node_pair

pytestmark = pytest.mark.timeout(60)


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def test_socket_mode_and_cleanup(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        path = pair.a.socket
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        private = pair.a.server.private_dir
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
        await pair.a.server.stop(0.1)
        assert not _exists(path) and not _exists(private)


async def test_nested_socket_dir_is_created_and_stale_socket_replaced(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        path = tmp_path / "run" / "meshd" / "x.sock"
        stale = socket.socket(socket.AF_UNIX)
        path.parent.mkdir(parents=True)
        stale.bind(str(path))
        stale.close()  # a socket file left by a killed daemon
        server = await serve(pair.a.node, str(path))
        try:
            async with api(str(path)) as a:
                resp = await a.node.GetStatus(npb.GetStatusRequest())
                assert resp.status.address == pair.a.address
            with pytest.raises(FailedPrecondition, match="already serving"):
                await serve(pair.b.node, str(path))
        finally:
            await server.stop(0.1)
        not_a_socket = tmp_path / "file.sock"
        not_a_socket.write_text("keep me")
        with pytest.raises(FailedPrecondition, match="not a socket"):
            await serve(pair.a.node, str(not_a_socket))
        assert not_a_socket.read_text() == "keep me"


async def test_health_and_reflection(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket) as a:
        health = health_pb2_grpc.HealthStub(a.channel)
        for service in ("", "meshd.v1.NodeService", "meshd.v1.MessagingService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(a.channel)
        call = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = set()
        async for resp in call:
            names |= {s.name for s in resp.list_services_response.service}
            break
        assert {"meshd.v1.NodeService", "meshd.v1.MessagingService"} <= names
        assert "grpc.health.v1.Health" in names


async def test_private_socket_without_credentials_is_refused(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        backend = os.path.join(pair.a.server.private_dir, "grpc.sock")
        async with grpc.aio.insecure_channel(f"unix:{backend}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ngrpc.NodeServiceStub(channel).GetStatus(npb.GetStatusRequest())
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_each_connection_has_its_own_registry_entry(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        registry = pair.a.server.registry
        assert len(registry) == 0
        # Channels to one target share a connection unless told otherwise.
        local = (("grpc.use_local_subchannel_pool", 1),)
        path = f"unix:{pair.a.socket}"
        async with grpc.aio.insecure_channel(path, options=local) as one, \
                grpc.aio.insecure_channel(path, options=local) as two:  # fmt: skip
            await ngrpc.NodeServiceStub(one).GetStatus(npb.GetStatusRequest())
            await ngrpc.NodeServiceStub(two).GetStatus(npb.GetStatusRequest())
            assert len(registry) == 2
        for _ in range(200):  # the relay sees the close on a later loop pass
            if len(registry) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(registry) == 0


class _BrokenRoutes:
    """The real node, except that ``routes()`` has a bug."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def __getattr__(self, name: str) -> object:
        return getattr(self._node, name)

    def routes(self) -> list[RouteInfo]:
        raise RuntimeError("simulated bug")


async def test_unexpected_exception_is_internal_and_server_survives(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        broken = _BrokenRoutes(pair.a.node)
        with structlog.testing.capture_logs() as logs:
            server = await serve(broken, str(tmp_path / "broken.sock"))  # type: ignore[arg-type]
            try:
                async with api(str(tmp_path / "broken.sock")) as a:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await a.node.ListRoutes(npb.ListRoutesRequest())
                    assert info.value.code() == grpc.StatusCode.INTERNAL
                    assert "simulated bug" not in (info.value.details() or "")
                    resp = await a.node.GetStatus(npb.GetStatusRequest())
                    assert resp.status.address == pair.a.address
            finally:
                await server.stop(0.1)
    failures = [e for e in logs if e["event"] == "api_call_failed"]
    assert len(failures) == 1
    assert failures[0]["method"] == "/meshd.v1.NodeService/ListRoutes"
    assert failures[0]["exc_info"] is True and failures[0]["log_level"] == "error"


async def test_stop_ends_open_streams_promptly(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, api(pair.a.socket) as a:
        from meshd.api.v1 import messaging_pb2 as mpb

        stream = a.msg.Subscribe(mpb.SubscribeRequest(), metadata=a.md)
        first = await stream.read()  # the stream is live (neighbour_up is in the log)
        assert first.cursor > 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pair.a.server.stop(5.0)
        assert loop.time() - started < 2.0  # not the 5 s grace
        async with asyncio.timeout(5):
            while (ev := await stream.read()) is not grpc.aio.EOF:  # ends cleanly, no error
                assert ev.cursor > first.cursor
        assert await stream.code() == grpc.StatusCode.OK
