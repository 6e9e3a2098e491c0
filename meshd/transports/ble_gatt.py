"""The BlueZ-facing halves of the BLE transport: a bless peripheral and a bleak central.

Both are thin: they move PDUs (``ble_session``) between GATT and callbacks, and know
nothing of handshakes or links. The adapter watch (``AdapterWatch``) follows BlueZ on
D-Bus (dbus-fast): the adapter's ``Powered`` property, ``org.bluez`` appearing and
vanishing (bluetoothd restarts), and the bus connection itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from meshd.transports.ble_advert import COMPANY_ID, RX_CHAR_UUID, SERVICE_UUID, TX_CHAR_UUID

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
_PROPS_IFACE = "org.freedesktop.DBus.Properties"
APP_PATH = "/org/meshd/ble"


class Refused(Exception):
    """A write the peripheral refuses (unknown session, no free slot, bad PDU)."""


_REFUSED_MARK = "meshd refused the write: "


class _RefusalLogFilter(logging.Filter):
    """dbus-next (0.2.3) sends the error reply for a ``DBusError`` raised in a method and
    then re-raises it, logging "got unexpected error processing a message" with a
    traceback on the root logger. Our refusals are expected: drop those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _REFUSED_MARK not in str(record.msg)


def quiet_refusal_logs() -> None:
    """Install the filter on the root logger once (dbus-next logs there)."""
    root = logging.getLogger()
    if not any(isinstance(f, _RefusalLogFilter) for f in root.filters):
        root.addFilter(_RefusalLogFilter())


class AdapterWatch:
    """What BlueZ says about one adapter: present, powered; ``changed`` on every change."""

    def __init__(
        self, adapter: str, on_change: Callable[[], None], on_device_gone: Callable[[], None]
    ) -> None:
        self.adapter = adapter
        self.path = f"/org/bluez/{adapter}"
        self._on_change = on_change
        self._on_device_gone = on_device_gone
        self._bus: Any = None
        self.bus_ok = False
        self.bluez = False
        self.present = False
        self.powered = False
        self.error = ""

    async def connect(self) -> None:
        """Connect to the system bus and read the current state; raises on no bus."""
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        self._bus = bus
        self.bus_ok = True
        bus.add_message_handler(self._on_message)
        for rule in (
            f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{BLUEZ}'",
            f"type='signal',interface='{_PROPS_IFACE}',member='PropertiesChanged',"
            f"path_namespace='{self.path}'",
            "type='signal',interface='org.freedesktop.DBus.ObjectManager',"
            "member='InterfacesAdded'",
        ):
            await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[rule],
                )
            )
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="NameHasOwner",
                signature="s",
                body=[BLUEZ],
            )
        )
        self.bluez = bool(
            reply is not None and reply.message_type is MessageType.METHOD_RETURN
            and reply.body[0]
        )
        await self.refresh()
        asyncio.get_running_loop().create_task(self._watch_disconnect(bus))

    async def refresh(self) -> None:
        """Re-read presence and ``Powered`` of the adapter."""
        from dbus_fast import Message, MessageType

        bus = self._bus
        if bus is None or not bus.connected:
            self.bus_ok = self.present = self.powered = False
            return
        reply = await bus.call(
            Message(
                destination=BLUEZ,
                path=self.path,
                interface=_PROPS_IFACE,
                member="Get",
                signature="ss",
                body=[ADAPTER_IFACE, "Powered"],
            )
        )
        if reply is not None and reply.message_type is MessageType.METHOD_RETURN:
            self.bluez = self.present = True
            self.powered = bool(reply.body[0].value)
        else:
            self.present = self.powered = False
            self.error = str(reply.body[0]) if reply is not None and reply.body else ""

    def down_reason(self) -> str:
        """Why the adapter cannot be used now, for the transport's status detail."""
        if not self.bus_ok:
            return "down: system bus connection lost"
        if not self.bluez:
            return "down: bluetoothd not running"
        if not self.present:
            return f"down: adapter {self.adapter} gone"
        if not self.powered:
            return f"down: adapter {self.adapter} powered off"
        return "down"

    def _on_message(self, msg: Any) -> None:
        member = msg.member
        if member == "NameOwnerChanged":
            self.bluez = bool(msg.body[2])
            if not self.bluez:
                self.present = self.powered = False
            self._on_change()
        elif member == "PropertiesChanged":
            iface, changed = msg.body[0], msg.body[1]
            if msg.path == self.path and iface == ADAPTER_IFACE and "Powered" in changed:
                self.powered = bool(changed["Powered"].value)
                self._on_change()
            elif (
                iface == "org.bluez.Device1"
                and "Connected" in changed
                and not changed["Connected"].value
            ):
                self._on_device_gone()
        elif member == "InterfacesAdded" and msg.body and msg.body[0] == self.path:
            self._on_change()

    async def _watch_disconnect(self, bus: Any) -> None:
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()
        if bus is self._bus:
            self.bus_ok = self.present = self.powered = False
            self._on_change()

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()


class Peripheral:
    """bless GATT server: meshd's service, RX (write) and TX (notify), our advertisement."""

    def __init__(
        self,
        adapter: str,
        on_write: Callable[[bytes], None],
    ) -> None:
        self._adapter = adapter
        self._on_write = on_write
        self._server: Any = None
        self._adv: Any = None
        self._adv_data = b""

    async def start(self, summary: bytes) -> None:
        from bless.backends.attribute import GATTAttributePermissions as Perm
        from bless.backends.bluezdbus.server import BlessServerBlueZDBus
        from bless.backends.characteristic import GATTCharacteristicProperties as Prop

        quiet_refusal_logs()
        server = BlessServerBlueZDBus(name="meshd", adapter=self._adapter)
        self._server = server
        server.read_request_func = lambda _char, **_kw: bytearray()
        server.write_request_func = self._write
        await server.setup_task
        # bless puts its objects under /org/bluez/<name>; bleak (and any BlueZ client)
        # watches InterfacesAdded under /org/bluez/ from every sender and chokes on a
        # GattService1 without "Device" (KeyError in bleak's manager). Ours live apart.
        server.app.base_path = APP_PATH
        await server.add_new_service(SERVICE_UUID)
        await server.add_new_characteristic(
            SERVICE_UUID, RX_CHAR_UUID, Prop.write, None, Perm.writeable
        )
        await server.add_new_characteristic(
            SERVICE_UUID, TX_CHAR_UUID, Prop.notify, None, Perm.readable
        )
        # bless's start() would advertise the service UUID only; ours adds the summary.
        server.bus.export(server.app.path, server.app)
        await server.app.register(server.adapter)
        await self.advertise(summary)

    async def advertise(self, summary: bytes) -> None:
        """(Re-)register the advertisement with ``summary`` (BlueZ reads it once)."""
        from bless.backends.bluezdbus.dbus.advertisement import BlueZLEAdvertisement, Type
        from dbus_next.signature import Variant

        server = self._server
        if server is None or summary == self._adv_data:
            return
        iface = server.adapter.get_interface("org.bluez.LEAdvertisingManager1")
        if self._adv is not None:
            old, self._adv = self._adv, None
            with contextlib.suppress(Exception):
                await iface.call_unregister_advertisement(old.path)
            server.bus.unexport(old.path)
        adv = BlueZLEAdvertisement(Type.PERIPHERAL, 1, server.app)
        adv._service_uuids.append(SERVICE_UUID)
        adv._manufacturer_data = {COMPANY_ID: Variant("ay", summary)}
        server.bus.export(adv.path, adv)
        await iface.call_register_advertisement(adv.path, {})
        self._adv = adv
        self._adv_data = summary

    def notify(self, pdu: bytes) -> bool:
        """Notify every subscribed central (they filter by session byte)."""
        server = self._server
        if server is None or not server.bus.connected:
            return False
        char = server.get_characteristic(TX_CHAR_UUID)
        char.value = bytearray(pdu)
        return bool(server.update_value(SERVICE_UUID, TX_CHAR_UUID))

    @property
    def alive(self) -> bool:
        return self._server is not None and bool(self._server.bus.connected)

    def _write(self, _char: Any, value: bytearray, **_kw: Any) -> None:
        """Raising ``Refused`` refuses the write: the central's write fails with it."""
        from dbus_next.errors import DBusError

        try:
            self._on_write(bytes(value))
        except Refused as exc:
            raise DBusError("org.bluez.Error.NotPermitted", _REFUSED_MARK + str(exc)) from None  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        server, self._server = self._server, None
        self._adv = None
        self._adv_data = b""
        if server is None:
            return
        if server.bus.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.stop(), 3.0)
        server.bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.bus.wait_for_disconnect(), 3.0)


class CentralConnection:
    """One bleak client to one peripheral: notifications in, writes with response out."""

    def __init__(
        self,
        device: Any,
        on_notify: Callable[[bytes], None],
        on_disconnect: Callable[[], None],
    ) -> None:
        from bleak import BleakClient

        self.address = str(getattr(device, "address", device))
        self._on_notify = on_notify
        self._on_disconnect = on_disconnect
        self._client = BleakClient(device, disconnected_callback=lambda _c: on_disconnect())
        self.mtu = 23

    async def connect(self, *, connect_timeout: float) -> None:
        client = self._client
        await asyncio.wait_for(client.connect(timeout=connect_timeout), connect_timeout + 1)
        char = client.services.get_characteristic(RX_CHAR_UUID)
        if char is None:
            raise LookupError("peer has no meshd RX characteristic")
        self.mtu = int(char.max_write_without_response_size) + 3
        await client.start_notify(TX_CHAR_UUID, lambda _c, data: self._on_notify(bytes(data)))

    async def write(self, pdu: bytes) -> None:
        await self._client.write_gatt_char(RX_CHAR_UUID, pdu, response=True)

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected)

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.disconnect(), 5.0)
