"""Two meshd processes on loopback: a group message accepted by the sender's API survives a
``kill -9`` of the sender while the member is down, and reaches the member once."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshctl.__main__ import amain

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path, name: str, port: int, peer: int | None) -> subprocess.Popen[str]:
    """meshd for ``name``; returns once it sent READY=1."""
    notify = root / f"{name}.notify"
    notify.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MESHD_SOCKET"}
    env["NOTIFY_SOCKET"] = str(notify)
    args = ["--peer", f"127.0.0.1:{peer}"] if peer else []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(20)
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshd", "--state-dir", str(root / name),
             "--socket", str(root / f"{name}.sock"), "--listen", f"127.0.0.1:{port}",
             "--no-discovery", "--no-ble", "--log-format", "json", "--log-level", "warning",
             *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return proc


async def ctl(sock: Path, *argv: str) -> Any:
    out, err = io.StringIO(), io.StringIO()
    code = await amain(["--socket", str(sock), "--json", *argv], out=out, err=err)
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


async def until(probe: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    end = time.monotonic() + within
    while not await probe():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=15)


async def test_group_send_survives_kill_9_of_the_sender(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    a_sock, b_sock = tmp_path / "a.sock", tmp_path / "b.sock"
    procs = [start(tmp_path, "a", pa, None)]
    try:
        procs.append(start(tmp_path, "b", pb, pa))
        b_addr = (await ctl(b_sock, "status"))["status"]["address"]

        async def linked() -> bool:
            return bool((await ctl(a_sock, "peers")).get("neighbours"))

        await until(linked)
        gid = (await ctl(a_sock, "groups", "create", "g"))["group_id"]
        await ctl(a_sock, "groups", "invite", gid, b_addr)

        async def joined() -> bool:
            return bool((await ctl(b_sock, "groups", "list")).get("groups"))

        await until(joined)
        stop(procs.pop())  # b is down from here on
        sent = await ctl(a_sock, "groups", "send", gid, "while b is down")
        stop(procs.pop(), signal.SIGKILL)  # no shutdown code runs in a
        db = sqlite3.connect(tmp_path / "a" / "meshd.db")
        kept = db.execute("SELECT count(*) FROM group_outbox").fetchone()[0]
        db.close()
        assert kept >= 1  # b's copy, committed before the API answered

        procs.append(start(tmp_path, "a", pa, None))
        procs.append(start(tmp_path, "b", pb, pa))

        async def got() -> bool:
            return bool((await ctl(b_sock, "groups", "history", gid)).get("messages"))

        await until(got)

        async def delivered() -> bool:
            rows = (await ctl(a_sock, "groups", "history", gid)).get("messages", [])
            return bool(rows) and rows[0].get("state") == "DELIVERY_STATE_DELIVERED"

        await until(delivered)
        await asyncio.sleep(0.3)
        rows = (await ctl(b_sock, "groups", "history", gid))["messages"]
        assert [r["message_id"] for r in rows] == [sent["message_id"]]  # once
    finally:
        for proc in procs:
            stop(proc, signal.SIGKILL)
