"""bleak and bless in separate processes, each seeing only its own node's bus as the system
bus (DBUS_SYSTEM_BUS_ADDRESS), the way meshd daemons will run against the virtual BlueZ."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from meshd.testing.virtual_bluez import World, dbus_daemon_path

pytestmark = [
    pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon not installed"),
    pytest.mark.timeout(30),
]
pytest.importorskip("bleak")
pytest.importorskip("bless")

SERVICE = "6d657368-0101-4000-8000-00805f9b34fb"
CHAR = "6d657368-0102-4000-8000-00805f9b34fb"

PERIPHERAL = f"""
import asyncio, sys
from bless.backends.bluezdbus.server import BlessServerBlueZDBus as BlessServer
from bless.backends.attribute import GATTAttributePermissions as Perm
from bless.backends.characteristic import GATTCharacteristicProperties as Prop

async def main():
    server = BlessServer(name="proc-p")
    def on_read(char, **kw):
        return bytearray(b"proc-p value")
    def on_write(char, value, **kw):
        # Echo every write back as a notification, reversed.
        char.value = bytearray(bytes(value)[::-1])
        server.update_value("{SERVICE}", "{CHAR}")
    server.read_request_func = on_read
    server.write_request_func = on_write
    await server.add_new_service("{SERVICE}")
    await server.add_new_characteristic(
        "{SERVICE}", "{CHAR}", Prop.read | Prop.write | Prop.notify, None,
        Perm.readable | Perm.writeable)
    await server.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""

CENTRAL = f"""
import asyncio, json
from bleak import BleakClient, BleakScanner

async def main():
    found = await BleakScanner.discover(timeout=1.0, return_adv=True,
                                        service_uuids=["{SERVICE}"])
    (device, adv), = found.values()
    got = asyncio.Queue()
    async with BleakClient(device) as client:
        first = await client.read_gatt_char("{CHAR}")
        await client.start_notify("{CHAR}", lambda c, d: got.put_nowait(bytes(d)))
        await client.write_gatt_char("{CHAR}", b"abc", response=True)
        echo = await asyncio.wait_for(got.get(), 5)
    print(json.dumps({{"address": device.address, "name": adv.local_name,
                      "rssi": adv.rssi, "read": first.decode(), "echo": echo.decode()}}))

asyncio.run(main())
"""


async def _python(script: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_central_and_peripheral_processes_on_their_own_buses(tmp_path: Path) -> None:
    (tmp_path / "peripheral.py").write_text(PERIPHERAL)
    (tmp_path / "central.py").write_text(CENTRAL)
    async with World(scan_interval=0.05) as world:
        c = await world.add_node("c")
        p = await world.add_node("p")
        world.set_link("c", "p", rssi=-66, mtu=247)
        periph = await _python(tmp_path / "peripheral.py", p.env)
        try:
            assert periph.stdout is not None and periph.stdin is not None
            line = await asyncio.wait_for(periph.stdout.readline(), 15)
            assert line == b"ready\n", await periph.stderr.read() if periph.stderr else b""
            central = await _python(tmp_path / "central.py", c.env)
            out, err = await asyncio.wait_for(central.communicate(), 20)
            assert central.returncode == 0, err.decode()
            result = json.loads(out.decode().strip().splitlines()[-1])
            assert world.errors == []
            assert result == {
                "address": p.address,
                "name": "proc-p",
                "rssi": -66,
                "read": "proc-p value",
                "echo": "cba",
            }
        finally:
            if periph.returncode is None:
                periph.kill()
            await periph.wait()


async def test_command_line_world_is_steered_through_stdin() -> None:
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshd.testing.virtual_bluez",
        "--node",
        "a",
        "--node",
        "b",
        "--link",
        "a,b,-70,100",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def ask(line: str) -> dict[str, object]:
        stdin.write(line.encode() + b"\n")
        await stdin.drain()
        answer: dict[str, object] = json.loads(await asyncio.wait_for(stdout.readline(), 10))
        return answer

    try:
        hello = json.loads(await asyncio.wait_for(stdout.readline(), 15))
        a = hello["nodes"]["a"]
        bus = await MessageBus(bus_address=a["bus"]).connect()

        async def powered() -> bool:
            reply = await bus.call(
                Message(
                    destination="org.bluez",
                    path="/org/bluez/hci0",
                    interface="org.freedesktop.DBus.Properties",
                    member="Get",
                    signature="ss",
                    body=["org.bluez.Adapter1", "Powered"],
                )
            )
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
            return bool(reply.body[0].value)

        assert await powered()
        assert await ask("power a off") == {"ok": True}
        assert not await powered()
        status = await ask("status")
        assert status["links"] == [["a", "b"]] and status["connections"] == []
        bad = await ask("link a b -70 9999")
        assert bad["ok"] is False and "mtu" in str(bad["error"])
        assert (await ask("cut a b"))["ok"] is True
        assert (await ask("status"))["links"] == []
        bus.disconnect()
        stdin.write(b"quit\n")
        await stdin.drain()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
