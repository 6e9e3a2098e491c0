"""meshctl's ``amain`` against real Nodes serving the API in this process."""

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


class _Lines(io.StringIO):
    """Collects output lines and wakes a waiter on each one."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.changed = asyncio.Event()

    def write(self, s: str) -> int:
        self.lines += [line for line in s.splitlines() if line]
        self.changed.set()
        return len(s)

    async def wait_for(self, n: int) -> list[str]:
        while len(self.lines) < n:
            self.changed.clear()
            await self.changed.wait()
        return self.lines


async def test_status_peers_routes(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        sock = pair.a.socket
        code, out, err = await ctl("--socket", sock, "status")
        assert (code, err) == (0, "")
        assert out.splitlines()[0].split() == ["address", pair.a.address]
        assert "TRANSPORT" in out and "memory" in out
        code, out, _ = await ctl("--socket", sock, "--json", "status")
        doc = json.loads(out)
        assert doc["status"]["address"] == pair.a.address
        assert doc["transports"][0]["state"] == "TRANSPORT_STATE_RUNNING"
        code, out, _ = await ctl("--socket", sock, "peers")
        assert code == 0
        header, row = out.splitlines()
        assert header.split()[:2] == ["ADDRESS", "LINK"]
        assert row.split()[:2] == [pair.b.address, "memory"]
        code, out, _ = await ctl("peers", "--json", "--socket", sock)
        assert [n["address"] for n in json.loads(out)["neighbours"]] == [pair.b.address]
        code, out, _ = await ctl("--socket", sock, "routes", "--json")
        assert code == 0 and isinstance(json.loads(out).get("routes", []), list)


async def test_send_wait_history_and_watch(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        watch_out = _Lines()
        watcher = asyncio.create_task(
            amain(["--socket", pair.b.socket, "--json", "--app", "chat", "watch"],
                  out=watch_out, err=io.StringIO())
        )
        code, out, err = await ctl(
            "--socket", pair.a.socket, "--app", "chat", "send", pair.b.address, "hi B", "--wait"
        )
        assert code == 0, err
        message_id = out.split()[0]
        assert out.strip() == f"{message_id}  delivered"
        async with asyncio.timeout(20):
            while True:
                events = [json.loads(line) for line in await watch_out.wait_for(1)]
                received = [e for e in events if "message_received" in e]
                if received:
                    break
                await watch_out.wait_for(len(watch_out.lines) + 1)
        watcher.cancel()
        msg = received[0]["message_received"]["message"]
        assert msg["message_id"] == message_id and msg["peer"] == pair.a.address
        cursor = int(received[0]["cursor"])

        code, out, _ = await ctl("--socket", pair.a.socket, "--app", "chat", "history")
        header, row = out.splitlines()
        assert header.split() == ["TIME", "DIR", "PEER", "STATE", "ID", "TEXT"]
        assert row.split()[2:] == ["to", pair.b.address, "delivered", message_id, "hi", "B"]
        code, out, _ = await ctl("--socket", pair.b.socket, "--app", "other", "history")
        assert (code, out.strip()) == (0, "no messages")

        # Replaying from a cursor: nothing after the received message but later events.
        replay = _Lines()
        task = asyncio.create_task(
            amain(["--socket", pair.b.socket, "--app", "chat", "watch", "--from",
                   str(cursor - 1)], out=replay, err=io.StringIO())
        )
        async with asyncio.timeout(10):
            first = (await replay.wait_for(1))[0]
        task.cancel()
        assert first.split()[0] == str(cursor)
        assert f"message from {pair.a.address} ({message_id}" in first and first.endswith("hi B")


async def test_send_errors_are_one_line(tmp_path: Path) -> None:
    async with node_pair(tmp_path) as pair:
        addr = pair.b.address
        typo = addr[:5] + ("a" if addr[5] != "a" else "b") + addr[6:]
        code, out, err = await ctl("--socket", pair.a.socket, "send", typo, "x")
        assert (code, out) == (1, "")
        assert err.startswith("meshctl: dst: checksum mismatch") and err.count("\n") == 1
        code, _, err = await ctl("--socket", pair.a.socket, "--app", "BAD APP", "status")
        assert code == 1 and err.startswith("meshctl: meshd-app: ")
        # Nobody has this address: --wait gives up after the timeout, clearly.
        pair.wire.cut()
        code, out, err = await ctl(
            "--socket", pair.a.socket, "send", addr, "lost", "--wait", "--timeout", "0.5"
        )
        assert code == 1
        assert err.splitlines()[-1].startswith("meshctl: no delivery confirmation for ")
        assert "within 0.5 s" in err
