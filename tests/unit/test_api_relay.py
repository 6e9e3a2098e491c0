"""The credential relay on its own: bytes both ways with back-pressure, and bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path

import structlog

from meshd.api.relay import CredentialRegistry, CredentialRelay
from meshd.api.server import _listen, _make_private_dir


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def _echo_backend(path: str, peers: list[str]) -> asyncio.Server:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peers.append(w.get_extra_info("peername"))
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    return await asyncio.start_unix_server(echo, path)


async def test_relays_large_transfers_and_forgets_closed_connections(tmp_path: Path) -> None:
    private = _make_private_dir(str(tmp_path))
    backend_path = os.path.join(private, "backend.sock")
    peers: list[str] = []
    backend = await _echo_backend(backend_path, peers)
    registry = CredentialRegistry()
    log = structlog.get_logger("test")
    relay = CredentialRelay(registry, backend_path, private, log)
    public = str(tmp_path / "public.sock")
    await relay.start(_listen(public, private, "no-such-group-meshd", log))
    try:
        blob = os.urandom(4 * 1024 * 1024)  # far past every buffer: exercises pause/resume
        r, w = await asyncio.open_unix_connection(public)

        async def send() -> None:
            w.write(blob)
            await w.drain()

        sender = asyncio.create_task(send())
        got = await asyncio.wait_for(r.readexactly(len(blob)), 30)
        await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
        # The backend saw the relay's per-connection name, and that name is registered.
        assert len(peers) == 1 and peers[0].startswith(private + "/c")
        conn = registry.lookup("unix:" + peers[0])
        assert (conn.cred.pid, conn.cred.uid) == (os.getpid(), os.getuid())
        assert not _exists(peers[0])  # the bound name is unlinked once connected
        w.close()
        async with asyncio.timeout(5):
            while len(registry):  # noqa: ASYNC110 - the relay notices EOF on a later pass
                await asyncio.sleep(0.01)
    finally:
        await relay.stop()
        backend.close()


async def test_backend_down_closes_the_client(tmp_path: Path) -> None:
    private = _make_private_dir(str(tmp_path))
    registry = CredentialRegistry()
    log = structlog.get_logger("test")
    relay = CredentialRelay(registry, os.path.join(private, "missing.sock"), private, log)
    public = str(tmp_path / "public.sock")
    await relay.start(_listen(public, private, "no-such-group-meshd", log))
    try:
        r, w = await asyncio.open_unix_connection(public)
        w.write(b"hello")
        # Closed (EOF, or a reset since "hello" was never read), nothing relayed.
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r.read(), 5) == b""
        assert len(registry) == 0
        w.close()
    finally:
        await relay.stop()


async def test_connections_past_the_limit_are_refused(tmp_path: Path) -> None:
    private = _make_private_dir(str(tmp_path))
    backend_path = os.path.join(private, "backend.sock")
    backend = await _echo_backend(backend_path, [])
    log = structlog.get_logger("test")
    registry = CredentialRegistry()
    relay = CredentialRelay(registry, backend_path, private, log, max_connections=2)
    public = str(tmp_path / "public.sock")
    await relay.start(_listen(public, private, "no-such-group-meshd", log))
    writers = []
    try:
        for i in range(2):
            r, w = await asyncio.open_unix_connection(public)
            writers.append(w)
            w.write(b"ping%d" % i)
            assert await asyncio.wait_for(r.readexactly(5), 5) == b"ping%d" % i
        r, w = await asyncio.open_unix_connection(public)
        writers.append(w)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r.read(), 5) == b""
        assert len(registry) == 2
    finally:
        for w in writers:
            w.close()
        await relay.stop()
        backend.close()
