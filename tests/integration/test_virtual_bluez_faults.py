"""Virtual BlueZ: faults, bad input and the peripheral's side, seen through raw D-Bus calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property

from meshd.testing.virtual_bluez import VirtualNode, World, dbus_daemon_path

from .test_virtual_bluez import CHAR, Peripheral, release_bleak

pytestmark = [
    pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon not installed"),
    pytest.mark.timeout(30),
]
pytest.importorskip("bleak")
pytest.importorskip("bless")

HCI0 = "/org/bluez/hci0"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(scan_interval=0.05, device_timeout=0.3) as w:
        w.add_cleanup(release_bleak)
        yield w
        assert w.errors == []


async def _raw(node: VirtualNode) -> MessageBus:
    return await MessageBus(bus_address=node.bus_address).connect()


async def _call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> Message:
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    return reply


async def _get(bus: MessageBus, path: str, interface: str, prop: str) -> Any:
    reply = await _call(
        bus, path, "org.freedesktop.DBus.Properties", "Get", "ss", [interface, prop]
    )
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return reply.body[0].value


class BadAdvertisement(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.bluez.LEAdvertisement1")

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "loud"


class BulkyAdvertisement(ServiceInterface):
    """One 128-bit service UUID and 7 bytes of manufacturer data: 32 bytes of AD."""

    def __init__(self) -> None:
        super().__init__("org.bluez.LEAdvertisement1")

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "peripheral"

    @dbus_property(access=PropertyAccess.READ)
    def ServiceUUIDs(self) -> Annotated[list[str], DBusSignature("as")]:
        return ["6d657368-0001-4000-8000-00805f9b34fb"]

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> Annotated[dict[int, Variant], DBusSignature("a{qv}")]:
        return {0xFFFF: Variant("ay", b"1234567")}


@pytest.mark.parametrize("limit", [31, None])
async def test_advertising_data_limit(limit: int | None) -> None:
    async with World(adv_data_limit=limit) as world:
        p = await world.add_node("p")
        bus = await _raw(p)
        bus.export("/app/adv0", BulkyAdvertisement())
        reply = await _call(
            bus,
            HCI0,
            "org.bluez.LEAdvertisingManager1",
            "RegisterAdvertisement",
            "oa{sv}",
            ["/app/adv0", {}],
        )
        if limit is None:  # e.g. extended advertising
            assert reply.message_type is MessageType.METHOD_RETURN
            assert p.active_advertisements() == 1
        else:
            assert reply.error_name == "org.bluez.Error.Failed"
            assert "too long" in reply.body[0] and "32 > 31" in reply.body[0]
            assert p.active_advertisements() == 0
        bus.disconnect()


async def test_bad_advertisement_is_refused_naming_the_field(world: World) -> None:
    p = await world.add_node("p")
    bus = await _raw(p)
    bus.export("/app/adv0", BadAdvertisement())
    reply = await _call(
        bus,
        HCI0,
        "org.bluez.LEAdvertisingManager1",
        "RegisterAdvertisement",
        "oa{sv}",
        ["/app/adv0", {}],
    )
    assert reply.message_type is MessageType.ERROR
    assert reply.error_name == "org.bluez.Error.InvalidArguments"
    assert "Type" in reply.body[0]
    assert await _get(bus, HCI0, "org.bluez.LEAdvertisingManager1", "ActiveInstances") == 0
    # Unregistering what was never registered is an error too, and BlueZ keeps running.
    reply = await _call(
        bus, HCI0, "org.bluez.LEAdvertisingManager1", "UnregisterAdvertisement", "o", ["/app/adv0"]
    )
    assert reply.error_name == "org.bluez.Error.DoesNotExist"
    bus.disconnect()


async def test_power_via_dbus_and_discovery_needs_power(world: World) -> None:
    c = await world.add_node("c")
    bus = await _raw(c)
    reply = await _call(
        bus,
        HCI0,
        "org.freedesktop.DBus.Properties",
        "Set",
        "ssv",
        ["org.bluez.Adapter1", "Powered", Variant("b", False)],
    )
    assert reply.message_type is MessageType.METHOD_RETURN
    assert not world.air.powered("c")
    assert await _get(bus, HCI0, "org.bluez.Adapter1", "PowerState") == "off"
    reply = await _call(bus, HCI0, "org.bluez.Adapter1", "StartDiscovery")
    assert reply.error_name == "org.bluez.Error.NotReady"
    world.set_powered("c", True)
    reply = await _call(bus, HCI0, "org.bluez.Adapter1", "StartDiscovery")
    assert reply.message_type is MessageType.METHOD_RETURN
    assert await _get(bus, HCI0, "org.bluez.Adapter1", "Discovering") is True
    bus.disconnect()


async def test_vanished_app_stops_advertising_and_device_expires(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakScanner

    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "gone")
    await periph.start()
    assert p.active_advertisements() == 1
    assert await BleakScanner.find_device_by_address(p.address, timeout=5.0) is not None
    periph.server.bus.disconnect()  # the app dies without unregistering
    for _ in range(250):
        if p.active_advertisements() == 0:
            break
        await asyncio.sleep(0.02)
    assert p.active_advertisements() == 0 and not p.applications
    # After device_timeout (0.3 s) unheard, C's BlueZ forgets the temporary device.
    for _ in range(250):
        if p.address not in c.devices:
            break
        await asyncio.sleep(0.02)
    assert p.address not in c.devices
    assert await BleakScanner.find_device_by_address(p.address, timeout=0.3) is None


async def test_rssi_follows_the_air(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from bleak import BleakScanner

    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p", rssi=-40)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "mover")
    await periph.start()
    seen: list[int] = []
    moved = asyncio.Event()

    def on_adv(device: Any, adv: Any) -> None:
        if device.address == p.address:
            seen.append(adv.rssi)
            if adv.rssi == -85:
                moved.set()

    async with BleakScanner(on_adv):
        await asyncio.sleep(0.2)
        world.air.update_link("c", "p", rssi=-85)
        await asyncio.wait_for(moved.wait(), 5.0)
    assert seen[0] == -40 and seen[-1] == -85
    await periph.stop()


async def test_peripheral_side_disconnect_reaches_the_central(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakClient, BleakScanner

    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "host")
    await periph.start()
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    gone = asyncio.Event()
    client = BleakClient(device, disconnected_callback=lambda _c: gone.set())
    await client.connect()
    pbus = await _raw(p)
    central_path = p.device_path_of(c.address)
    assert await _get(pbus, central_path, "org.bluez.Device1", "Connected") is True
    reply = await _call(pbus, central_path, "org.bluez.Device1", "Disconnect")
    assert reply.message_type is MessageType.METHOD_RETURN
    await asyncio.wait_for(gone.wait(), 5.0)
    assert not world.air.connected("c", "p")
    pbus.disconnect()
    await periph.stop()


async def test_notifications_reach_only_subscribed_links(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakClient, BleakScanner

    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "quiet")
    await periph.start()
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    got: list[bytes] = []
    async with BleakClient(device) as client:
        periph.notify(b"before")  # not subscribed yet: must not arrive
        await client.start_notify(CHAR, lambda _c, data: got.append(bytes(data)))
        periph.notify(b"during")
        for _ in range(250):
            if got:
                break
            await asyncio.sleep(0.02)
        await client.stop_notify(CHAR)
        periph.notify(b"after")
        await asyncio.sleep(0.1)
    assert got == [b"during"]
    await periph.stop()


async def test_bluez_restart_drops_links_and_registrations(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bluetoothd of P restarts: C's link drops, P's app must register again to be seen."""
    from bleak import BleakClient, BleakScanner

    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "phoenix")
    await periph.start()
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    gone = asyncio.Event()
    client = BleakClient(device, disconnected_callback=lambda _c: gone.set())
    await client.connect()
    address = p.bus_address

    await world.restart_bluez("p", down_for=0.05)
    await asyncio.wait_for(gone.wait(), 5.0)
    assert p.bus_address == address  # same bus, new org.bluez owner
    assert p.active_advertisements() == 0 and not p.applications
    pbus = await _raw(p)
    assert await _get(pbus, HCI0, "org.bluez.Adapter1", "Powered") is True
    pbus.disconnect()
    assert await BleakScanner.find_device_by_address(p.address, timeout=0.3) is None

    # The app registers again (what a transport that survives restarts must do).
    app: Any = periph.server.app
    await app.register(periph.server.adapter)
    await app.start_advertising(periph.server.adapter)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    async with BleakClient(device) as again:
        assert await again.read_gatt_char(CHAR) == b"hello from phoenix"


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"UUIDs": Variant("as", ["not-a-uuid"])}, "UUIDs"),
        ({"RSSI": Variant("s", "-50")}, "RSSI"),
        ({"Transport": Variant("s", "radio")}, "Transport"),
    ],
)
async def test_bad_discovery_filter_is_refused(
    world: World, options: dict[str, Variant], text: str
) -> None:
    c = await world.add_node("c")
    bus = await _raw(c)
    reply = await _call(bus, HCI0, "org.bluez.Adapter1", "SetDiscoveryFilter", "a{sv}", [options])
    assert reply.error_name == "org.bluez.Error.InvalidArguments"
    assert text in reply.body[0]
    # A short 16-bit UUID is accepted (expanded to 128 bits, as BlueZ does).
    reply = await _call(
        bus,
        HCI0,
        "org.bluez.Adapter1",
        "SetDiscoveryFilter",
        "a{sv}",
        [{"UUIDs": Variant("as", ["180D"])}],
    )
    assert reply.message_type is MessageType.METHOD_RETURN
    bus.disconnect()
