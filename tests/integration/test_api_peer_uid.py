"""A caller running as another user: the kernel's uid/gid reach the node, not root's.

The client connects to the API socket from a child process running as ``nobody`` and
hands the connected socket back to this process (SCM_RIGHTS); gRPC then talks over a
local bridge to that socket. SO_PEERCRED records who called connect(), so the daemon
must see nobody, whatever process writes the bytes afterwards.
"""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from meshd.api.server import serve
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import messaging_pb2_grpc as mgrpc
from meshd.api.v1 import node_pb2 as npb
from meshd.api.v1 import node_pb2_grpc as ngrpc
from tests.integration.api_harness import node_pair

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # the child needs only the standard library


def _nogroup_is_65534() -> bool:
    try:
        return grp.getgrnam("nogroup").gr_gid == NOBODY
    except KeyError:
        return False


pytestmark = [
    pytest.mark.skipif(not _nogroup_is_65534(), reason="no group nogroup (65534)"),
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a client as nobody"),
    pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no /usr/bin/python3"),
]

_CHILD = """
import os, socket, sys
api = socket.socket(socket.AF_UNIX)
try:
    api.connect(sys.argv[1])
except PermissionError:
    print("EACCES", flush=True)
    sys.exit(0)
ctl = socket.socket(socket.AF_UNIX)
ctl.connect(sys.argv[2])
socket.send_fds(ctl, [str(os.getpid()).encode()], [api.fileno()])
"""


async def _connect_as(uid: int, gid: int, api_path: str, work: str) -> tuple[int, int] | None:
    """(fd connected by a child running as uid:gid, the child's pid); None if refused."""
    ctl_path = os.path.join(work, "ctl.sock")
    ctl = socket.socket(socket.AF_UNIX)
    ctl.bind(ctl_path)
    os.chmod(ctl_path, 0o666)
    ctl.listen(1)
    ctl.setblocking(False)
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, "-c", _CHILD, api_path, ctl_path,
        user=uid, group=gid, extra_groups=[], stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    try:
        accept = asyncio.ensure_future(loop.sock_accept(ctl))
        out = asyncio.ensure_future(proc.communicate())
        done, _ = await asyncio.wait({accept, out}, return_when=asyncio.FIRST_COMPLETED)
        if accept not in done:
            accept.cancel()
            stdout, _ = await out
            assert stdout.strip() == b"EACCES", stdout
            return None
        conn, _ = accept.result()
        with conn:
            conn.setblocking(True)
            msg, fds, _, _ = socket.recv_fds(conn, 64, 1)
        await out
        return fds[0], int(msg)
    finally:
        ctl.close()
        os.unlink(ctl_path)


@asynccontextmanager
async def _bridge(fd: int, path: str) -> AsyncIterator[str]:
    """A local socket whose first connection is spliced onto ``fd``."""
    upstream = socket.socket(fileno=fd)
    up_r, up_w = await asyncio.open_unix_connection(sock=upstream)
    tasks: list[asyncio.Task[None]] = []

    async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.extend([asyncio.create_task(copy(r, up_w)), asyncio.create_task(copy(up_r, w))])

    server = await asyncio.start_unix_server(on_client, path)
    try:
        yield path
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        up_w.close()


@asynccontextmanager
async def _world_dir() -> AsyncIterator[str]:
    """pytest's tmp_path is 0700 root: nobody needs a directory it can traverse."""
    path = tempfile.mkdtemp(prefix="meshd-uid-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_caller_as_nobody_is_seen_as_nobody(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, _world_dir() as work:
        api_path = os.path.join(work, "api.sock")
        server = await serve(pair.a.node, api_path, socket_group="nogroup",
                             admin_group="no-such-group-meshd")  # fmt: skip
        try:
            st = os.stat(api_path)
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, NOBODY)
            # App "shared" is owned by uid 0 (an admin's own calls never claim an app, so
            # the claim is made the way a non-admin first use records it).
            pair.a.node.store.claim_app("shared", 0, time.time())
            got = await _connect_as(NOBODY, NOBODY, api_path, work)
            assert got is not None
            fd, child_pid = got
            async with _bridge(fd, os.path.join(work, "bridge.sock")) as bridge, \
                    grpc.aio.insecure_channel(f"unix:{bridge}") as channel:  # fmt: skip
                resp = await ngrpc.NodeServiceStub(channel).GetStatus(
                    npb.GetStatusRequest(), metadata=(("meshd-app", "guest"),)
                )
                messaging = mgrpc.MessagingServiceStub(channel)
                mine = await messaging.ListHistory(
                    mpb.ListHistoryRequest(), metadata=(("meshd-app", "guest"),)
                )
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await messaging.ListHistory(
                        mpb.ListHistoryRequest(), metadata=(("meshd-app", "shared"),)
                    )
            assert list(mine.messages) == []
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (info.value.details() or "").startswith("app_id: ")
            assert f"belongs to uid 0, not {NOBODY}" in (info.value.details() or "")
            caller = resp.caller
            assert (caller.uid, caller.gid, caller.pid) == (NOBODY, NOBODY, child_pid)
            assert caller.app_id == "guest" and not caller.is_admin
            assert resp.status.state_dir == ""  # admins only
            assert resp.status.address == pair.a.address
        finally:
            await server.stop(0.1)


async def test_user_outside_the_socket_group_cannot_connect(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair, _world_dir() as work:
        api_path = os.path.join(work, "api.sock")
        server = await serve(pair.a.node, api_path, socket_group="nogroup")
        try:
            assert await _connect_as(NOBODY, 4321, api_path, work) is None
        finally:
            await server.stop(0.1)
