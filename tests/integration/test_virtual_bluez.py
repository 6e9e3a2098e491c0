"""Unmodified bleak (central) and bless (peripheral) against the virtual BlueZ.

Each simulated node has its own private dbus-daemon. In this process, bleak is pointed at
node C's bus through DBUS_SYSTEM_BUS_ADDRESS for the whole test (bleak opens new bus
connections per BLE connection), and bless connects once to node P's bus while that
variable briefly points there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from meshd.testing.virtual_bluez import VirtualNode, World, dbus_daemon_path

pytestmark = [
    pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon not installed"),
    pytest.mark.timeout(30),
]

bleak = pytest.importorskip("bleak")
bless = pytest.importorskip("bless")

SERVICE = "6d657368-0001-4000-8000-00805f9b34fb"
CHAR = "6d657368-0002-4000-8000-00805f9b34fb"


class Peripheral:
    """A bless GATT server with one read/write/notify characteristic."""

    def __init__(self, node: VirtualNode, name: str) -> None:
        self.node = node
        self.name = name
        self.value = bytearray(b"hello from " + name.encode())
        self.writes: list[bytes] = []
        self.server: Any = None

    async def start(self, before_start: Callable[[], Awaitable[None]] | None = None) -> None:
        from bless.backends.attribute import GATTAttributePermissions
        from bless.backends.bluezdbus.server import BlessServerBlueZDBus as BlessServer
        from bless.backends.characteristic import GATTCharacteristicProperties

        with self.node.as_system_bus():
            server = BlessServer(name=self.name)
            await server.setup_task
        server.read_request_func = self._read
        server.write_request_func = self._write
        await server.add_new_service(SERVICE)
        props = (
            GATTCharacteristicProperties.read
            | GATTCharacteristicProperties.write
            | GATTCharacteristicProperties.write_without_response
            | GATTCharacteristicProperties.notify
        )
        perms = GATTAttributePermissions.readable | GATTAttributePermissions.writeable
        await server.add_new_characteristic(SERVICE, CHAR, props, None, perms)
        self.server = server
        self.node.world.add_cleanup(self.stop)
        if before_start is not None:
            await before_start()
        await server.start()

    def _read(self, characteristic: Any, **kwargs: Any) -> bytearray:
        return self.value

    def _write(self, characteristic: Any, value: Any, **kwargs: Any) -> None:
        self.writes.append(bytes(value))
        self.value = bytearray(value)

    def notify(self, data: bytes) -> None:
        char = self.server.get_characteristic(CHAR)
        char.value = bytearray(data)
        assert self.server.update_value(SERVICE, CHAR)

    async def stop(self) -> None:
        """Unregister and leave the bus (idempotent; also run by World.close())."""
        server, self.server = self.server, None
        if server is None:
            return
        if server.bus.connected:
            with contextlib.suppress(Exception):  # BlueZ may have forgotten us already
                await asyncio.wait_for(server.stop(), 5.0)
        server.bus.disconnect()
        with contextlib.suppress(Exception):
            await server.bus.wait_for_disconnect()


async def release_bleak() -> None:
    """Close bleak's shared BlueZ connection of this loop while the bus is still up.

    Left open, it would see end-of-file when the world stops the dbus-daemon; unretrieved
    EOFError futures logged during garbage collection then trip a CPython 3.11.7 bug
    (traceback carets use ast.parse, whose failure mid-way leaves the ast module's
    recursion counter off: "AST constructor recursion depth mismatch" for every later
    ast.parse, including pytest's assertion rewriting).
    """
    from bleak.backends.bluezdbus import manager

    instances: dict[Any, Any] = manager._global_instances
    instance = instances.pop(asyncio.get_running_loop(), None)
    bus = getattr(instance, "_bus", None)
    if bus is not None:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(scan_interval=0.05) as w:
        w.add_cleanup(release_bleak)
        yield w
        assert w.errors == []


async def _setup(
    world: World, monkeypatch: pytest.MonkeyPatch, *, mtu: int = 185
) -> tuple[VirtualNode, VirtualNode, Peripheral]:
    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p", rssi=-48, mtu=mtu)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "meshdP")
    await periph.start()
    return c, p, periph


async def test_scan_finds_advertised_service_and_rssi_not_out_of_range(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakScanner

    _c, p, periph = await _setup(world, monkeypatch)
    far = await world.add_node("far")  # advertises the same service, but out of C's range
    far_periph = Peripheral(far, "meshdFar")
    await far_periph.start()

    found = await BleakScanner.discover(timeout=1.0, return_adv=True)
    by_addr = {dev.address: adv for dev, adv in found.values()}
    assert p.address in by_addr
    assert far.address not in by_addr
    adv = by_addr[p.address]
    assert SERVICE in adv.service_uuids
    assert adv.rssi == -48
    assert adv.local_name == "meshdP"

    # Filtered by service UUID, as a meshd central will scan.
    found = await BleakScanner.discover(timeout=1.0, return_adv=True, service_uuids=[SERVICE])
    assert {dev.address for dev, _ in found.values()} == {p.address}
    await far_periph.stop()
    await periph.stop()


async def test_connect_read_write_notify(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from bleak import BleakClient, BleakScanner

    c, p, periph = await _setup(world, monkeypatch, mtu=185)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    got: asyncio.Queue[bytes] = asyncio.Queue()
    async with BleakClient(device) as client:
        assert client.is_connected
        char = client.services.get_characteristic(CHAR)
        assert char is not None
        assert set(char.properties) >= {"read", "write", "notify"}
        assert char.max_write_without_response_size == 185 - 3

        assert await client.read_gatt_char(CHAR) == b"hello from meshdP"
        await client.write_gatt_char(CHAR, b"ping", response=True)
        assert periph.writes == [b"ping"]
        assert await client.read_gatt_char(CHAR) == b"ping"

        await client.start_notify(CHAR, lambda _c, data: got.put_nowait(bytes(data)))
        periph.notify(b"n1")
        periph.notify(b"x" * 300)  # longer than MTU-3: truncated like a real notification
        assert await asyncio.wait_for(got.get(), 5.0) == b"n1"
        assert await asyncio.wait_for(got.get(), 5.0) == b"x" * 182
        # The peripheral's BlueZ shows the central as a connected device.
        assert c.address in p.devices and p.devices[c.address].connected
        await client.stop_notify(CHAR)
    assert not world.air.connected("c", "p")
    assert not p.devices[c.address].connected
    await periph.stop()


async def test_write_without_response_longer_than_mtu_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakClient, BleakScanner
    from bleak.exc import BleakGATTProtocolError

    _c, p, periph = await _setup(world, monkeypatch, mtu=23)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    async with BleakClient(device) as client:
        await client.write_gatt_char(CHAR, b"y" * 20, response=False)
        with pytest.raises(BleakGATTProtocolError, match="Invalid Attribute Value Length"):
            await client.write_gatt_char(CHAR, b"y" * 21, response=False)
        # With response, long writes are fine (BlueZ does the Prepare Write dance).
        await client.write_gatt_char(CHAR, b"z" * 200, response=True)
    assert periph.writes == [b"y" * 20, b"z" * 200]
    await periph.stop()


async def test_power_off_peripheral_disconnects_central(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakClient, BleakScanner

    _c, p, periph = await _setup(world, monkeypatch)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    disconnected = asyncio.Event()
    client = BleakClient(device, disconnected_callback=lambda _c: disconnected.set())
    await client.connect()
    assert client.is_connected
    world.set_powered("p", False)
    await asyncio.wait_for(disconnected.wait(), 5.0)
    assert not client.is_connected
    # Powered off, P is not heard; powered on again, it is found and connectable.
    assert await BleakScanner.find_device_by_address(p.address, timeout=0.3) is None
    world.set_powered("p", True)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    async with BleakClient(device) as again:
        assert await again.read_gatt_char(CHAR) == b"hello from meshdP"
    await periph.stop()


async def test_dropped_connection_and_out_of_range(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakClient, BleakScanner
    from bleak.exc import BleakError

    _c, p, periph = await _setup(world, monkeypatch)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    lost = asyncio.Event()
    client = BleakClient(device, disconnected_callback=lambda _c: lost.set())
    await client.connect()
    world.drop_connection("c", "p")
    await asyncio.wait_for(lost.wait(), 5.0)
    with pytest.raises(BleakError):
        await client.read_gatt_char(CHAR)
    world.cut_link("c", "p")
    with pytest.raises(BleakError):
        await BleakClient(device).connect(timeout=5.0)
    await periph.stop()


async def test_acquired_sockets_mtu_notify_and_write(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AcquireWrite/AcquireNotify hand out sockets; bleak's MTU hack relies on them."""
    import os

    from bleak import BleakClient, BleakScanner
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    c, p, periph = await _setup(world, monkeypatch, mtu=100)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    got: asyncio.Queue[bytes] = asyncio.Queue()
    async with BleakClient(device) as client:
        backend: Any = client._backend
        await backend._acquire_mtu()  # the documented workaround (bleak's mtu_size.py)
        assert client.mtu_size == 100
        await client.start_notify(
            CHAR, lambda _c, data: got.put_nowait(bytes(data)), bluez={"use_start_notify": False}
        )
        periph.notify(b"via socket")
        periph.notify(b"q" * 150)
        assert await asyncio.wait_for(got.get(), 5.0) == b"via socket"
        assert await asyncio.wait_for(got.get(), 5.0) == b"q" * 97

        # AcquireWrite from a raw client: each packet is one Write Command, in order.
        char = client.services.get_characteristic(CHAR)
        assert char is not None
        path = char.obj[0]
        raw = await MessageBus(bus_address=c.bus_address, negotiate_unix_fd=True).connect()
        reply = await raw.call(
            Message(
                destination="org.bluez",
                path=path,
                member="AcquireWrite",
                interface="org.bluez.GattCharacteristic1",
                signature="a{sv}",
                body=[{}],
            )
        )
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        fd, mtu = reply.unix_fds[reply.body[0]], reply.body[1]
        assert mtu == 100
        before = len(periph.writes)
        for i in range(5):
            os.write(fd, b"w%d" % i)
        os.write(fd, b"L" * 200)  # more than MTU-3: cut to one Write Command's payload
        for _ in range(250):
            if len(periph.writes) >= before + 6:
                break
            await asyncio.sleep(0.02)
        assert periph.writes[before:] == [b"w0", b"w1", b"w2", b"w3", b"w4", b"L" * 97]
        second = await raw.call(
            Message(
                destination="org.bluez",
                path=path,
                member="AcquireWrite",
                interface="org.bluez.GattCharacteristic1",
                signature="a{sv}",
                body=[{}],
            )
        )
        assert second is not None and second.error_name == "org.bluez.Error.NotPermitted"
        os.close(fd)  # releasing it makes it acquirable again
        (mirror,) = c.links["p"].chars.values()
        for _ in range(250):
            if not mirror.write_acquired:
                break
            await asyncio.sleep(0.02)
        assert not mirror.write_acquired
        # Packets written just before the close still go out, in order.
        third = await raw.call(
            Message(
                destination="org.bluez",
                path=path,
                member="AcquireWrite",
                interface="org.bluez.GattCharacteristic1",
                signature="a{sv}",
                body=[{}],
            )
        )
        assert third is not None and third.message_type is MessageType.METHOD_RETURN
        fd = third.unix_fds[third.body[0]]
        before = len(periph.writes)
        for chunk in (b"a", b"b", b"c"):
            os.write(fd, chunk)
        os.close(fd)
        for _ in range(250):
            if len(periph.writes) >= before + 3:
                break
            await asyncio.sleep(0.02)
        assert periph.writes[before:] == [b"a", b"b", b"c"]
        raw.disconnect()
    await periph.stop()
