"""BLE system tests (issue 5): real meshd daemons with only BLE, each on its own virtual
BlueZ bus (one world process, docs/virtual-bluez.md). A 3-node line a-b-c where a and c
are out of range: a's 50 KB message reaches c over a link with MTU 517 and one with MTU
23; b's adapter is powered off and on and its links come back without a restart. Two
nodes: hello both ways, and a hostile central writing bad PDUs never crashes the daemon."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.api.v1 import messaging_pb2 as mpb
from meshd.testing.daemon_proc import MeshdProcess, child_env, deathsig_prefix
from meshd.testing.virtual_bluez import dbus_daemon_path
from tests.system.mesh_api import Api, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon not installed"),
]
pytest.importorskip("bleak")
pytest.importorskip("bless")

BLE_ONLY = ("--listen", "127.0.0.1:0", "--no-discovery", "--ble", "--battery", "90")


class BleLab:
    def __init__(self, root: Path, nodes: Iterable[str], links: Iterable[str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "meshd.testing.virtual_bluez", "--scan-interval", "0.1"]
        for name in nodes:
            argv += ["--node", name]
        for link in links:
            argv += ["--link", link]
        self.world = subprocess.Popen(
            [*deathsig_prefix(), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(root),
        )
        assert self.world.stdout is not None
        hello = json.loads(self.world.stdout.readline())
        self.buses: dict[str, str] = {n: v["bus"] for n, v in hello["nodes"].items()}
        self.daemons: dict[str, MeshdProcess] = {}

    def ask(self, command: str) -> dict[str, Any]:
        """One world command (``power b off``, ``status``...); its JSON answer."""
        assert self.world.stdin is not None and self.world.stdout is not None
        self.world.stdin.write(command + "\n")
        self.world.stdin.flush()
        answer: dict[str, Any] = json.loads(self.world.stdout.readline())
        return answer

    def start(self, *names: str) -> None:
        for name in names:
            daemon = MeshdProcess(name, self.root / name, self.root)
            daemon.env = {"DBUS_SYSTEM_BUS_ADDRESS": self.buses[name]}
            self.daemons[name] = daemon
            daemon.start(*BLE_ONLY, wait_ready=False)
        for name in names:
            self.daemons[name].wait_ready(timeout=20)

    def daemon(self, name: str) -> MeshdProcess:
        return self.daemons[name]

    def sock(self, name: str) -> str:
        return str(self.daemons[name].socket_path)

    def ble_status(self, name: str) -> dict[str, Any]:
        doc = self.daemons[name].meshctl_json("status")
        (ble,) = [t for t in doc["transports"] if t["name"] == "ble"]
        out = dict(ble)
        out["state"] = str(out.get("state", "")).lower().removeprefix("transport_state_")
        return out

    def peers(self, name: str) -> set[str]:
        doc = self.daemons[name].meshctl_json("peers")
        rows = doc if isinstance(doc, list) else doc.get("neighbours", doc.get("peers", []))
        return {str(r["address"]) for r in rows}

    def wait_peers(self, name: str, want: set[str], *, within: float) -> None:
        deadline = time.monotonic() + within
        got: set[str] = set()
        while time.monotonic() < deadline:
            got = self.peers(name)
            if want <= got:
                return
            time.sleep(0.2)
        raise AssertionError(
            f"{name}: peers {got} after {within} s, wanted {want}\n"
            + self.daemons[name].log_tail(30)
        )

    def logs(self) -> str:
        return "\n".join(
            f"===== {n} =====\n{d.log_tail(80)}" for n, d in self.daemons.items()
        )

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.close()
        if self.world.poll() is None:
            with contextlib.suppress(Exception):
                self.ask("quit")
            try:
                self.world.wait(10)
            except subprocess.TimeoutExpired:
                self.world.kill()
                self.world.wait(5)


@pytest.fixture
def make_ble_lab(tmp_path: Path) -> Iterator[Callable[[list[str], list[str]], BleLab]]:
    labs: list[BleLab] = []

    def factory(nodes: list[str], links: list[str]) -> BleLab:
        lab = BleLab(tmp_path / f"ble{len(labs)}", nodes, links)
        labs.append(lab)
        return lab

    try:
        yield factory
    finally:
        for lab in labs:
            print(lab.logs())
            lab.close()


async def _delivered(api: Api, message_id: str) -> bool:
    return (await api.get(message_id)).state == mpb.DELIVERY_STATE_DELIVERED


async def _send_and_check(lab: BleLab, src: str, dst: str, payload: bytes, within: float) -> None:
    """Send through the API, wait for DELIVERED at the sender and the same bytes at dst."""
    async with Api(lab.sock(dst)) as rx:
        dst_addr = await rx.address()
        async with Api(lab.sock(src)) as tx:
            message_id = await tx.send(dst_addr, payload)
            await wait_for(lambda: _delivered(tx, message_id), within=within,
                           what=f"{len(payload)} bytes {src}->{dst} delivered")
        got = [m.payload for m in await rx.incoming()]
        assert payload in got, f"{dst} has {[len(p) for p in got]} bytes, not the payload"


@pytest.mark.timeout(150)
async def test_line_two_hops_50kb_over_mtu_517_and_23_then_power_cycle(
    make_ble_lab: Callable[[list[str], list[str]], BleLab],
) -> None:
    lab = make_ble_lab(["a", "b", "c"], ["a,b,-55,517", "b,c,-60,23"])
    lab.start("a", "b", "c")
    addr = {n: lab.daemon(n).meshctl_json("status")["status"]["address"] for n in "abc"}
    lab.wait_peers("b", {addr["a"], addr["c"]}, within=20)
    assert addr["c"] not in lab.peers("a")  # out of range: only via b
    ble = lab.ble_status("b")
    assert ble["state"] == "running" and ble["links"] == 2

    big = hashlib.sha256(b"seed").digest() * 1600  # 51,200 bytes, not compressible
    await _send_and_check(lab, "a", "c", b"hello over two BLE hops", within=40)
    await _send_and_check(lab, "a", "c", big, within=60)

    # b's adapter off: b says it is down and has no links; its neighbours lose it.
    assert lab.ask("power b off")["ok"]
    await wait_for(lambda: lab.ble_status("b")["state"] == "degraded", within=10,
                   what="b's BLE transport degraded")
    status = lab.ble_status("b")
    assert "powered off" in status.get("detail", "") and status.get("links", 0) == 0
    await wait_for(lambda: addr["b"] not in lab.peers("a"), within=10, what="a lost b")
    # ...and back on: links return without restarting anyone.
    assert lab.ask("power b on")["ok"]
    lab.wait_peers("b", {addr["a"], addr["c"]}, within=30)
    assert lab.ble_status("b")["state"] == "running"
    assert all(d.starts == 1 and d.running for d in lab.daemons.values())
    await _send_and_check(lab, "c", "a", b"back after the power cycle", within=40)


@pytest.mark.timeout(120)
async def test_two_nodes_exchange_and_bad_pdus_never_crash(
    make_ble_lab: Callable[[list[str], list[str]], BleLab],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = make_ble_lab(["a", "b", "x"], ["a,b,-50,185", "x,b,-50,185"])
    lab.start("a", "b")
    addr = {n: lab.daemon(n).meshctl_json("status")["status"]["address"] for n in "ab"}
    lab.wait_peers("a", {addr["b"]}, within=20)
    send = lab.daemon("a").meshctl("send", "--wait", "--timeout", "30", addr["b"], "hi b")
    assert send.returncode == 0
    await _send_and_check(lab, "b", "a", b"hi a", within=30)

    # x is a hostile central in range of b: it writes junk to b's GATT pipe.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab.buses["x"])
    refused = await _hostile_writes(lab.ask("status")["nodes"]["b"]["address"])
    assert refused > 0
    assert lab.daemon("b").running
    await _send_and_check(lab, "a", "b", b"still fine", within=30)

    # bluetoothd of b restarts (down 1 s): b forgets nothing, registers again, relinks.
    restart = asyncio.get_running_loop().run_in_executor(None, lab.ask, "restart b 1.0")
    await wait_for(lambda: "bluetoothd" in lab.ble_status("b").get("detail", ""), within=5,
                   what="b's BLE transport saying bluetoothd is down")
    assert (await restart)["ok"]
    lab.wait_peers("a", {addr["b"]}, within=30)
    await _send_and_check(lab, "b", "a", b"after bluetoothd restarted", within=30)
    assert lab.ble_status("b")["state"] == "running"
    assert all(d.starts == 1 and d.running for d in lab.daemons.values())
    for name in "ab":
        assert "Traceback" not in lab.daemon(name).log_path.read_text(), name


async def _hostile_writes(device_address: str) -> int:
    """Connect with bleak and write malformed PDUs; how many writes b refused."""
    from bleak import BleakClient, BleakScanner
    from bleak.exc import BleakError

    from meshd.transports.ble_advert import RX_CHAR_UUID

    refused = 0
    junk = [
        b"", b"\x00", b"\x00\x01\x02", b"\x85\x01\x01\x00\x05\x08",  # OPEN with MTU 5
        b"\x85\x01\x01\x00\xb9\x20",  # a valid OPEN for session 5
        b"\x05\x80\x01",  # FIRST fragment with a truncated length
        b"\x05\x41\x00xx",  # continuation without a first fragment
        b"\x05\xc0\x01" + os.urandom(40),  # a whole "record" of garbage
        b"\x09\xc0\x01abc",  # unknown session
        b"\x85\x02\xff",  # bad CREDIT
        os.urandom(100), os.urandom(180),
    ]
    device = await BleakScanner.find_device_by_address(device_address, timeout=10)
    assert device is not None
    try:
        async with BleakClient(device) as client:
            for pdu in junk:
                try:
                    await client.write_gatt_char(RX_CHAR_UUID, pdu, response=True)
                except BleakError:
                    refused += 1
    finally:
        await release_bleak()
    return refused


async def release_bleak() -> None:
    """Close bleak's shared BlueZ connection of this loop while the bus is still up (see
    tests/integration/test_virtual_bluez.py: left open it trips a CPython 3.11.7 bug)."""
    from bleak.backends.bluezdbus import manager

    instances: dict[Any, Any] = manager._global_instances
    instance = instances.pop(asyncio.get_running_loop(), None)
    bus = getattr(instance, "_bus", None)
    if bus is not None:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()
