"""One simulated machine's BlueZ: a private bus with org.bluez on it, hci0 and its devices."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dbus_fast import BusType, Message, MessageType, Variant, unpack_variants
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from meshd.errors import MeshdError

from .adapter import (
    ADV_MANAGER_INTERFACE,
    GATT_MANAGER_INTERFACE,
    Adapter,
    AdvertisingManager,
    GattManager,
    Root,
)
from .bus import PrivateBus
from .device import Device, device_path
from .link import Link
from .model import (
    ADVERTISEMENT_INTERFACE,
    GATT_CHARACTERISTIC_INTERFACE,
    Advertisement,
    AppService,
    normalize_uuid,
    parse_application,
)

if TYPE_CHECKING:
    from .world import World

BLUEZ = "org.bluez"
ADAPTER_PATH = "/org/bluez/hci0"
ERR_FAILED = "org.bluez.Error.Failed"
ERR_DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
ERR_ALREADY_EXISTS = "org.bluez.Error.AlreadyExists"
ERR_INVALID_ARGS = "org.bluez.Error.InvalidArguments"
ERR_NOT_READY = "org.bluez.Error.NotReady"
# BlueZ answers an app's GATT method within its own 30 s ATT timeout (Core Vol 3 Part F
# 3.3.3); a stuck app must not hang the simulated peer forever either.
APP_CALL_TIMEOUT = 30.0


_REGISTER_INTERFACE = {
    "RegisterAdvertisement": ADV_MANAGER_INTERFACE,
    "RegisterApplication": GATT_MANAGER_INTERFACE,
}


class HandoffBus(MessageBus):
    """A bus connection that closes our copy of a handed-off fd once it has been sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_after_send: set[int] = set()

    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]
        writer: Any = getattr(self, "_writer", None)
        if writer is not None and writer.buf is not None:
            # dbus-fast 5.2.0 writes at once when its queue is empty, even while an earlier
            # message is half written and waits for the socket: send() then raises EAGAIN
            # and the whole connection is torn down (seen relaying bursts of thousands of
            # notifications, bench/ble_bench.py). Queue behind the half-written message.
            if not msg.serial:
                msg.serial = self.next_serial()
            future: asyncio.Future[None] = self._loop.create_future()
            writer.buffer_message(msg, future)
            self._loop.add_writer(writer.fd, writer.write_callback)
        else:
            future = super().send(msg)
        fds = [fd for fd in msg.unix_fds if fd in self.close_after_send]
        if fds:
            self.close_after_send.difference_update(fds)
            future.add_done_callback(lambda _f: _close_all(fds))
        return future


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class VirtualNode:
    """org.bluez for one node; the world routes everything that crosses the air."""

    def __init__(self, world: World, name: str, address: str) -> None:
        self.world = world
        self._name = name
        self._address = address.upper()
        self._alias = name
        self._discovering = False
        self._filter_uuids: set[str] = set()
        self._filter_rssi: int | None = None
        self.adapter_path = ADAPTER_PATH
        self.daemon = PrivateBus(name)
        self._bus: HandoffBus | None = None
        self._adapter = Adapter(self)
        self._adv_manager = AdvertisingManager(self)
        self._gatt_manager = GattManager(self)
        self.advertisements: dict[tuple[str, str], Advertisement] = {}
        self.applications: dict[tuple[str, str], list[AppService]] = {}
        self.devices: dict[str, Device] = {}  # by remote address
        self.links: dict[str, Link] = {}  # where we are GATT client, by peer node name
        self._subscribers: dict[tuple[str, str], set[str]] = {}  # app char -> centrals
        self._senders: dict[tuple[str, str], deque[str]] = {}

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self._serve(await self.daemon.start())

    async def restart(self, *, down_for: float = 0.0) -> None:
        """bluetoothd exits and comes back on the same bus: every registration, device and
        discovery session is forgotten; apps see org.bluez vanish and must register again.
        (The world drops this node's connections first.)"""
        old, self._bus = self._bus, None
        if old is not None:
            old.disconnect()
            with contextlib.suppress(Exception):
                await old.wait_for_disconnect()  # type: ignore[no-untyped-call]
        self._reset()
        if down_for > 0:
            await asyncio.sleep(down_for)
        await self._serve(self.daemon.address)

    def _reset(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
        self.advertisements.clear()
        self.applications.clear()
        self.devices.clear()
        self._subscribers.clear()
        self._senders.clear()
        self._discovering = False
        self._filter_uuids = set()
        self._filter_rssi = None
        self._alias = self._name
        # Fresh interface objects: the old ones stay bound to the closed connection.
        self._adapter = Adapter(self)
        self._adv_manager = AdvertisingManager(self)
        self._gatt_manager = GattManager(self)

    async def _serve(self, address: str) -> None:
        bus = HandoffBus(bus_address=address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        await bus.connect()
        self._bus = bus
        bus.add_message_handler(functools.partial(self._on_message, bus))
        for rule in (
            "type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'",
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'",
        ):
            await self._dbus_call("AddMatch", "s", [rule])
        bus.export("/", Root(self._name))
        bus.export(self.adapter_path, self._adapter)
        bus.export(self.adapter_path, self._adv_manager)
        bus.export(self.adapter_path, self._gatt_manager)
        await bus.request_name(BLUEZ)

    async def stop(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            self._bus = None
        await self.daemon.stop()

    def hand_off(self, fd: int) -> int:
        """fd goes out in a method reply; close our copy once that reply is written."""
        self.bus.close_after_send.add(fd)
        return fd

    @property
    def bus(self) -> HandoffBus:
        if self._bus is None:
            raise DBusError(ERR_NOT_READY, f"virtual BlueZ of {self._name} is not running")
        return self._bus

    @property
    def bus_address(self) -> str:
        return self.daemon.address

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process whose "system bus" is this node's bus."""
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}

    @contextlib.contextmanager
    def as_system_bus(self) -> Iterator[None]:
        """Point DBUS_SYSTEM_BUS_ADDRESS here while a client connects (in-process use)."""
        old = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus_address
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = old

    # -- AdapterOwner -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> str:
        return self._address

    @property
    def alias(self) -> str:
        return self._alias

    @property
    def powered(self) -> bool:
        return self.world.air.powered(self._name)

    @property
    def discovering(self) -> bool:
        return self._discovering

    def set_alias(self, alias: str) -> None:
        self._alias = alias or self._name
        self._adapter.emit_properties_changed({"Alias": self._alias})

    def set_powered(self, powered: bool) -> None:
        self.world.set_powered(self._name, powered)

    def start_discovery(self) -> None:
        if not self.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        if not self._discovering:
            self._discovering = True
            self._adapter.emit_properties_changed({"Discovering": True})
        self.world.scan_soon(self)

    def stop_discovery(self) -> None:
        if not self._discovering:
            raise DBusError(ERR_FAILED, "No discovery started")
        self._discovering = False
        self._adapter.emit_properties_changed({"Discovering": False})

    def set_discovery_filter(self, options: dict[str, Variant]) -> None:
        props = unpack_variants(options)
        transport = props.get("Transport", "auto")
        if transport not in ("auto", "le", "bredr"):
            raise DBusError(ERR_INVALID_ARGS, f"Transport: unknown value {transport!r}")
        uuids = props.get("UUIDs", [])
        rssi = props.get("RSSI")
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise DBusError(ERR_INVALID_ARGS, "UUIDs: must be a list of strings")
        if rssi is not None and type(rssi) is not int:
            raise DBusError(ERR_INVALID_ARGS, "RSSI: must be an int16")
        try:
            self._filter_uuids = {normalize_uuid(u, field="UUIDs") for u in uuids}
        except MeshdError as exc:
            raise DBusError(ERR_INVALID_ARGS, str(exc)) from exc
        self._filter_rssi = rssi

    async def remove_device(self, path: str) -> None:
        device = next((d for d in self.devices.values() if d.path == path), None)
        if device is None:
            raise DBusError(ERR_DOES_NOT_EXIST, "Does Not Exist")
        if device.connected:
            await self.device_disconnect(device)
        self._drop_device(device)

    async def register_advertisement(self, path: str) -> None:
        owner = self._take_sender("RegisterAdvertisement", path)
        if (owner, path) in self.advertisements:
            raise DBusError(ERR_ALREADY_EXISTS, "Already Exists")
        props = await self._get_all(owner, path, ADVERTISEMENT_INTERFACE)
        try:
            adv = Advertisement.from_properties(owner, path, props)
        except MeshdError as exc:
            raise DBusError(ERR_INVALID_ARGS, str(exc)) from exc
        limit = self.world.adv_data_limit
        if limit is not None and adv.data_length() > limit:
            # What bluetoothd answers (its log says which: data too long).
            raise DBusError(
                ERR_FAILED,
                f"Advertising data too long or couldn't be generated "
                f"({adv.data_length()} > {limit} bytes)",
            )
        self.advertisements[(owner, path)] = adv
        self._adv_manager.emit_properties_changed({"ActiveInstances": self.active_advertisements()})

    def unregister_advertisement(self, path: str) -> None:
        key = next((k for k in self.advertisements if k[1] == path), None)
        if key is None:
            raise DBusError(ERR_DOES_NOT_EXIST, "Does Not Exist")
        del self.advertisements[key]
        self._adv_manager.emit_properties_changed({"ActiveInstances": self.active_advertisements()})

    def active_advertisements(self) -> int:
        return len(self.advertisements)

    async def register_application(self, path: str) -> None:
        owner = self._take_sender("RegisterApplication", path)
        if (owner, path) in self.applications:
            raise DBusError(ERR_ALREADY_EXISTS, "Already Exists")
        reply = await self._call_app(
            owner, path, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", "", []
        )
        if reply.signature != "a{oa{sa{sv}}}":
            raise DBusError(ERR_INVALID_ARGS, "GetManagedObjects: not a{oa{sa{sv}}}")
        objects = unpack_variants(reply.body[0])
        try:
            services = parse_application(owner, objects)
        except MeshdError as exc:
            raise DBusError(ERR_INVALID_ARGS, str(exc)) from exc
        self.applications[(owner, path)] = services

    def unregister_application(self, path: str) -> None:
        key = next((k for k in self.applications if k[1] == path), None)
        if key is None:
            raise DBusError(ERR_DOES_NOT_EXIST, "Does Not Exist")
        del self.applications[key]

    # -- what the air sees of this node -------------------------------------------------
    def connectable(self) -> bool:
        return any(a.connectable for a in self.advertisements.values())

    def gatt_table(self) -> list[AppService]:
        return [s for services in self.applications.values() for s in services]

    def heard_advertisement(self, peer: VirtualNode, rssi: int, now: float) -> None:
        """One advertising report of peer reached this (scanning) adapter."""
        advs = list(peer.advertisements.values())
        uuids = sorted({u for a in advs for u in a.service_uuids})
        if self._filter_uuids and not self._filter_uuids.intersection(uuids):
            return
        if self._filter_rssi is not None and rssi < self._filter_rssi:
            return
        manufacturer: dict[int, bytes] = {}
        service_data: dict[str, bytes] = {}
        for adv in advs:
            manufacturer.update(adv.manufacturer_data)
            service_data.update(adv.service_data)
        name = next((a.local_name for a in advs if a.local_name), None) or peer.alias
        device = self.devices.get(peer.address)
        fresh = device is None
        if device is None:
            device = Device(
                self,
                adapter_path=self.adapter_path,
                address=peer.address,
                peer=peer.name,
                name=name,
            )
        device.update_advertisement(
            rssi=rssi,
            name=name,
            uuids=uuids,
            manufacturer=manufacturer,
            service_data=service_data,
        )
        device.last_seen = now
        if fresh:
            self.devices[peer.address] = device
            self.bus.export(device.path, device)

    def acl_up(self, peer: VirtualNode, now: float) -> Device:
        """A connection with peer exists (either role): its Device1 shows Connected."""
        device = self.devices.get(peer.address)
        if device is None:
            device = Device(
                self,
                adapter_path=self.adapter_path,
                address=peer.address,
                peer=peer.name,
                name=peer.alias,
            )
            self.devices[peer.address] = device
            self.bus.export(device.path, device)
        device.last_seen = now
        device.set_connected(True)
        return device

    def acl_down(self, peer: VirtualNode, now: float) -> None:
        """The connection with peer is gone: Connected=False, then its GATT objects go."""
        device = self.devices.get(peer.address)
        if device is not None:
            device.last_seen = now  # a temporary device lingers for device_timeout
            device.set_connected(False)
        link = self.links.pop(peer.name, None)
        if link is not None:
            link.close()

    async def release_subscriptions(self, peer: VirtualNode) -> None:
        """peer's subscriptions to this node's apps end (StopNotify after the last)."""
        for key in [k for k, subs in self._subscribers.items() if peer.name in subs]:
            await self.unsubscribe(key, peer.name)

    def expire_devices(self, *, older_than: float) -> None:
        """Forget devices neither connected nor heard since older_than (temporary ones)."""
        for device in list(self.devices.values()):
            if not device.connected and device.last_seen < older_than:
                self._drop_device(device)

    def power_changed(self, powered: bool) -> None:
        self._adapter.emit_properties_changed(
            {"Powered": powered, "PowerState": "on" if powered else "off"}
        )
        if not powered:
            if self._discovering:
                self._discovering = False
                self._adapter.emit_properties_changed({"Discovering": False})
            for device in list(self.devices.values()):
                if not device.connected:
                    self._drop_device(device)

    # -- DeviceOwner --------------------------------------------------------------------
    async def device_connect(self, device: Device) -> None:
        await self.world.connect(self, device)

    async def device_disconnect(self, device: Device) -> None:
        await self.world.disconnect(self, device)

    # -- the peripheral's applications, called on behalf of a remote central ------------
    async def app_read(
        self, remote: tuple[str, str], interface: str, options: dict[str, Variant]
    ) -> bytes:
        reply = await self._call_app(
            remote[0], remote[1], interface, "ReadValue", "a{sv}", [options]
        )
        return bytes(reply.body[0])

    async def app_write(
        self, remote: tuple[str, str], interface: str, value: bytes, options: dict[str, Variant]
    ) -> None:
        await self._call_app(
            remote[0], remote[1], interface, "WriteValue", "aya{sv}", [value, options]
        )

    async def subscribe(self, remote: tuple[str, str], central: str) -> None:
        subs = self._subscribers.setdefault(remote, set())
        if not subs:  # BlueZ calls the app's StartNotify for the first subscriber only
            await self._call_app(
                remote[0], remote[1], GATT_CHARACTERISTIC_INTERFACE, "StartNotify", "", []
            )
        subs.add(central)

    async def unsubscribe(self, remote: tuple[str, str], central: str) -> None:
        subs = self._subscribers.get(remote, set())
        if central not in subs:
            return
        subs.discard(central)
        if not subs:
            del self._subscribers[remote]
            with contextlib.suppress(DBusError):  # the app may be gone already
                await self._call_app(
                    remote[0], remote[1], GATT_CHARACTERISTIC_INTERFACE, "StopNotify", "", []
                )

    def device_path_of(self, address: str) -> str:
        return device_path(self.adapter_path, address)

    # -- internals ----------------------------------------------------------------------
    def _drop_device(self, device: Device) -> None:
        if self.devices.get(device.address) is device:
            del self.devices[device.address]
            if self._bus is not None:
                self._bus.unexport(device.path, device)

    def _take_sender(self, member: str, path: str) -> str:
        queue = self._senders.get((member, path))
        if not queue:
            raise DBusError(ERR_FAILED, f"{member}: caller unknown")
        sender = queue.popleft()
        if not queue:
            del self._senders[(member, path)]
        return sender

    def _on_message(self, bus: HandoffBus, msg: Message) -> bool:
        """Sees every message first: records callers, app notifications, vanished apps.

        Never raises: an exception escaping a dbus-fast message handler is logged as a
        crash, and a connection left over from before a restart must just be ignored.
        """
        if bus is not self._bus:
            return False
        if msg.message_type is MessageType.METHOD_CALL:
            # Only calls that will reach the method (same path, member and signature), so
            # that no stale caller is left queued for a later one.
            if (
                msg.member in _REGISTER_INTERFACE
                and msg.interface in (None, _REGISTER_INTERFACE[msg.member])
                and msg.path == self.adapter_path
                and msg.signature == "oa{sv}"
            ):
                key = (msg.member, str(msg.body[0]))
                self._senders.setdefault(key, deque()).append(msg.sender or "")
        elif msg.message_type is MessageType.SIGNAL:
            if msg.member == "PropertiesChanged" and msg.sender != bus.unique_name:
                self._on_app_properties(msg)
            elif msg.member == "NameOwnerChanged" and len(msg.body) == 3 and not msg.body[2]:
                self._forget_owner(str(msg.body[0]))
        return False

    def _on_app_properties(self, msg: Message) -> None:
        if msg.signature != "sa{sv}as":
            return  # not a well-formed PropertiesChanged: an app's bug, not ours
        interface, changed = msg.body[0], msg.body[1]
        if interface != GATT_CHARACTERISTIC_INTERFACE or "Value" not in changed:
            return
        value = changed["Value"].value
        key = (msg.sender or "", msg.path or "")
        if isinstance(value, bytes) and self._subscribers.get(key):
            self.world.notify(self, key, value)

    def _forget_owner(self, owner: str) -> None:
        """An app left the bus: BlueZ drops its advertisements and GATT applications."""
        for key in [k for k in self.advertisements if k[0] == owner]:
            del self.advertisements[key]
            self._adv_manager.emit_properties_changed(
                {"ActiveInstances": self.active_advertisements()}
            )
        for key in [k for k in self.applications if k[0] == owner]:
            del self.applications[key]
        for key in [k for k in self._subscribers if k[0] == owner]:
            del self._subscribers[key]

    async def _get_all(self, owner: str, path: str, interface: str) -> dict[str, Any]:
        reply = await self._call_app(
            owner, path, "org.freedesktop.DBus.Properties", "GetAll", "s", [interface]
        )
        if reply.signature != "a{sv}":
            raise DBusError(ERR_INVALID_ARGS, f"GetAll({interface}): not a{{sv}}")
        props: dict[str, Any] = unpack_variants(reply.body[0])
        return props

    async def _call_app(
        self, owner: str, path: str, interface: str, member: str, signature: str, body: list[Any]
    ) -> Message:
        msg = Message(
            destination=owner,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
        try:
            reply = await asyncio.wait_for(self.bus.call(msg), APP_CALL_TIMEOUT)
        except TimeoutError:
            raise DBusError(ERR_FAILED, f"{member}: application did not answer") from None
        except DBusError:
            raise
        except Exception as exc:  # our bus connection broke (restart, shutdown)
            raise DBusError(ERR_FAILED, f"{member}: {exc!r}") from exc
        if reply is None:
            raise DBusError(ERR_FAILED, f"{member}: no reply")
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or ERR_FAILED
            # BlueZ turns an app's org.bluez.Error.* into the matching ATT error, which the
            # client's BlueZ maps back; anything else becomes a plain failure.
            if not name.startswith("org.bluez.Error."):
                name = ERR_FAILED
            text = str(reply.body[0]) if reply.body else member
            raise DBusError(name, text)
        return reply

    async def _dbus_call(self, member: str, signature: str, body: list[Any]) -> None:
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member=member,
                signature=signature,
                body=body,
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise DBusError(ERR_FAILED, f"{member} on the private bus failed")
