"""Virtual BlueZ GATT details: descriptors, two centrals on one peripheral, non-connectable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusStr
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property

from meshd.testing.virtual_bluez import World, dbus_daemon_path

from .test_virtual_bluez import CHAR, SERVICE, Peripheral, release_bleak

pytestmark = [
    pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon not installed"),
    pytest.mark.timeout(30),
]
pytest.importorskip("bleak")
pytest.importorskip("bless")

USER_DESCRIPTION = "00002901-0000-1000-8000-00805f9b34fb"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World(scan_interval=0.05) as w:
        w.add_cleanup(release_bleak)
        yield w
        assert w.errors == []


async def _call(bus: MessageBus, path: str, interface: str, member: str) -> Message:
    reply = await bus.call(
        Message(destination="org.bluez", path=path, interface=interface, member=member)
    )
    assert reply is not None
    return reply


async def test_descriptor_is_mirrored_and_readable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bleak import BleakClient, BleakScanner
    from bless.backends.attribute import GATTAttributePermissions
    from bless.backends.descriptor import GATTDescriptorProperties

    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "desc")

    async def before_start() -> None:
        await periph.server.add_new_descriptor(
            SERVICE,
            CHAR,
            USER_DESCRIPTION,
            GATTDescriptorProperties.read,
            bytearray(b"meshd frames"),
            GATTAttributePermissions.readable,
        )

    await periph.start(before_start=before_start)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    async with BleakClient(device) as client:
        char = client.services.get_characteristic(CHAR)
        assert char is not None
        (desc,) = [d for d in char.descriptors if d.uuid == USER_DESCRIPTION]
        assert await client.read_gatt_descriptor(desc) == b"meshd frames"
    await periph.stop()


async def test_two_centrals_share_one_subscription(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's StartNotify runs once; each subscribed central gets each notification."""
    from bleak import BleakClient, BleakScanner

    c = await world.add_node("c")
    d = await world.add_node("d")
    p = await world.add_node("p")
    world.set_link("c", "p")
    world.set_link("d", "p", mtu=23)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "shared")
    await periph.start()

    # Central d: raw D-Bus, as any BlueZ client would do it.
    dbus = await MessageBus(bus_address=d.bus_address).connect()
    assert (
        await _call(dbus, "/org/bluez/hci0", "org.bluez.Adapter1", "StartDiscovery")
    ).message_type is MessageType.METHOD_RETURN
    for _ in range(250):
        if p.address in d.devices:
            break
        await asyncio.sleep(0.02)
    dev_path = d.devices[p.address].path
    assert (
        await _call(dbus, dev_path, "org.bluez.Device1", "Connect")
    ).message_type is MessageType.METHOD_RETURN
    (d_char,) = d.links["p"].chars.values()
    d_values: list[bytes] = []

    def on_signal(msg: Message) -> None:
        if msg.member == "PropertiesChanged" and msg.path == d_char.path and "Value" in msg.body[1]:
            d_values.append(bytes(msg.body[1]["Value"].value))

    dbus.add_message_handler(on_signal)
    await dbus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[f"type='signal',path='{d_char.path}'"],
        )
    )
    assert (
        await _call(dbus, d_char.path, "org.bluez.GattCharacteristic1", "StartNotify")
    ).message_type is MessageType.METHOD_RETURN

    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    c_values: list[bytes] = []
    async with BleakClient(device) as client:
        await client.start_notify(CHAR, lambda _c, data: c_values.append(bytes(data)))
        app: Any = periph.server.app
        assert app.subscribed_characteristics == [CHAR]  # StartNotify reached the app once
        periph.notify(b"A" * 40)
        await _until(lambda: len(c_values) == 1 and len(d_values) == 1)
        assert c_values == [b"A" * 40]
        assert d_values == [b"A" * 20]  # d's link has MTU 23
        await client.stop_notify(CHAR)
        assert app.subscribed_characteristics == [CHAR]  # d still listens
        periph.notify(b"B")
        await _until(lambda: len(d_values) == 2)
        assert c_values == [b"A" * 40]
    assert (
        await _call(dbus, d_char.path, "org.bluez.GattCharacteristic1", "StopNotify")
    ).message_type is MessageType.METHOD_RETURN
    assert app.subscribed_characteristics == []
    dbus.disconnect()
    await periph.stop()


class Beacon(ServiceInterface):
    """A non-connectable advertisement, exported by a raw dbus-fast client."""

    def __init__(self) -> None:
        super().__init__("org.bluez.LEAdvertisement1")

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "broadcast"

    @dbus_property(access=PropertyAccess.READ)
    def LocalName(self) -> DBusStr:
        return "beacon"


async def test_broadcast_advertiser_is_seen_but_not_connectable(world: World) -> None:
    c = await world.add_node("c")
    b = await world.add_node("b")
    world.set_link("c", "b")
    bbus = await MessageBus(bus_address=b.bus_address).connect()
    bbus.export("/beacon/adv0", Beacon())
    reply = await bbus.call(
        Message(
            destination="org.bluez",
            path="/org/bluez/hci0",
            interface="org.bluez.LEAdvertisingManager1",
            member="RegisterAdvertisement",
            signature="oa{sv}",
            body=["/beacon/adv0", {}],
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
    cbus = await MessageBus(bus_address=c.bus_address).connect()
    await _call(cbus, "/org/bluez/hci0", "org.bluez.Adapter1", "StartDiscovery")
    await _until(lambda: b.address in c.devices)
    reply = await _call(cbus, c.devices[b.address].path, "org.bluez.Device1", "Connect")
    assert reply.error_name == "org.bluez.Error.Failed"
    assert "not connectable" in reply.body[0]
    bbus.disconnect()
    cbus.disconnect()


async def _until(cond: Any) -> None:
    for _ in range(250):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met within 5 s")


async def test_one_connection_carries_gatt_both_ways(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After C connects to P, P's Connect on C reuses that connection (as BlueZ does) and
    reads C's GATT server; one Disconnect ends both directions."""
    from bleak import BleakClient, BleakScanner

    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p", mtu=247)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "both-p")
    await periph.start()
    c_server = Peripheral(c, "both-c")  # C is a GATT server too
    await c_server.start()
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    gone = asyncio.Event()
    client = BleakClient(device, disconnected_callback=lambda _c: gone.set())
    await client.connect()
    assert world.air.connections() == [("c", "p")]

    pbus = await MessageBus(bus_address=p.bus_address).connect()
    c_on_p = p.device_path_of(c.address)
    reply = await _call(pbus, c_on_p, "org.bluez.Device1", "Connect")
    assert reply.message_type is MessageType.METHOD_RETURN
    assert world.air.connections() == [("c", "p")]  # still one connection
    (mirror,) = p.links["c"].chars.values()
    read = await pbus.call(
        Message(
            destination="org.bluez",
            path=mirror.path,
            interface="org.bluez.GattCharacteristic1",
            member="ReadValue",
            signature="a{sv}",
            body=[{}],
        )
    )
    assert read is not None and bytes(read.body[0]) == b"hello from both-c"
    assert mirror.owner.mtu == 247

    reply = await _call(pbus, c_on_p, "org.bluez.Device1", "Disconnect")
    assert reply.message_type is MessageType.METHOD_RETURN
    await asyncio.wait_for(gone.wait(), 5.0)  # C's bleak sees its link go as well
    assert world.air.connections() == [] and not p.links and not c.links
    pbus.disconnect()
    await c_server.stop()
    await periph.stop()


async def test_access_follows_the_characteristic_flags(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notify-only characteristic can be neither read nor written (ATT errors)."""
    from bleak import BleakClient, BleakScanner
    from bleak.exc import BleakGATTProtocolError
    from bless.backends.attribute import GATTAttributePermissions
    from bless.backends.characteristic import GATTCharacteristicProperties

    notify_only = "6d657368-0003-4000-8000-00805f9b34fb"
    c = await world.add_node("c")
    p = await world.add_node("p")
    world.set_link("c", "p")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address)
    periph = Peripheral(p, "strict")

    async def before_start() -> None:
        await periph.server.add_new_characteristic(
            SERVICE,
            notify_only,
            GATTCharacteristicProperties.notify,
            None,
            GATTAttributePermissions.readable,
        )

    await periph.start(before_start=before_start)
    device = await BleakScanner.find_device_by_address(p.address, timeout=5.0)
    assert device is not None
    async with BleakClient(device) as client:
        # bleak maps BlueZ's error text to the ATT error, so the texts must be BlueZ's.
        with pytest.raises(BleakGATTProtocolError, match="Read Not Permitted"):
            await client.read_gatt_char(notify_only)
        with pytest.raises(BleakGATTProtocolError, match="Write Not Permitted"):
            await client.write_gatt_char(notify_only, b"x", response=True)
        with pytest.raises(BleakGATTProtocolError, match="Write Not Permitted"):
            await client.write_gatt_char(notify_only, b"x", response=False)
        await client.write_gatt_char(CHAR, b"ok", response=True)  # the other one allows it
    assert periph.writes == [b"ok"]
    await periph.stop()
