"""Device1 objects for remote nodes and the mirrored GATT objects of a connected one.

The D-Bus surface follows BlueZ's doc/org.bluez.Device.rst, GattService.rst,
GattCharacteristic.rst and GattDescriptor.rst (client side). The behaviour behind each
method lives in the owner objects (``node.py``), reached through small protocols.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from dbus_fast import Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from .model import (
    GATT_CHARACTERISTIC_INTERFACE,
    GATT_DESCRIPTOR_INTERFACE,
    GATT_SERVICE_INTERFACE,
)

DEVICE_INTERFACE = "org.bluez.Device1"
DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
READ = PropertyAccess.READ
# A method without out-arguments; a bare "-> None" is not understood by dbus-fast.
NoReply = Annotated[None, DBusSignature("")]
FdAndMtu = Annotated[list[int], DBusSignature("hq")]


def device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


class DeviceOwner(Protocol):
    async def device_connect(self, device: Device) -> None: ...
    async def device_disconnect(self, device: Device) -> None: ...


class Device(ServiceInterface):
    """org.bluez.Device1 for one remote node seen by (or connected to) this adapter."""

    def __init__(
        self, owner: DeviceOwner, *, adapter_path: str, address: str, peer: str, name: str
    ) -> None:
        super().__init__(DEVICE_INTERFACE)
        self.owner = owner
        self.peer = peer  # node name in the air
        self.path = device_path(adapter_path, address)
        self._adapter_path = adapter_path
        self._address = address.upper()
        self._name = name
        self._alias = name
        self._rssi = -127
        self._uuids: list[str] = []
        self._manufacturer: dict[int, Variant] = {}
        self._service_data: dict[str, Variant] = {}
        self._connected = False
        self._resolved = False
        self._paired = False
        self._trusted = False
        self._blocked = False
        self.last_seen = 0.0

    # -- state changes made by the virtual BlueZ (each emits PropertiesChanged) -------
    def update_advertisement(
        self,
        *,
        rssi: int,
        name: str,
        uuids: list[str],
        manufacturer: dict[int, bytes],
        service_data: dict[str, bytes],
    ) -> None:
        changed: dict[str, Any] = {"RSSI": rssi}  # every report carries a fresh RSSI
        self._rssi = rssi
        if name != self._name:
            self._name = self._alias = name
            changed["Name"] = changed["Alias"] = name
        if uuids != self._uuids:
            self._uuids = list(uuids)
            changed["UUIDs"] = self._uuids
        mfr = {k: Variant("ay", v) for k, v in manufacturer.items()}
        if mfr != self._manufacturer:
            self._manufacturer = mfr
            changed["ManufacturerData"] = mfr
        sd = {k: Variant("ay", v) for k, v in service_data.items()}
        if sd != self._service_data:
            self._service_data = sd
            changed["ServiceData"] = sd
        self.emit_properties_changed(changed)

    def set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        changed: dict[str, Any] = {"Connected": connected}
        if not connected and self._resolved:
            self._resolved = False
            changed["ServicesResolved"] = False
        self.emit_properties_changed(changed)

    def set_services_resolved(self, resolved: bool) -> None:
        if resolved != self._resolved:
            self._resolved = resolved
            self.emit_properties_changed({"ServicesResolved": resolved})

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def address(self) -> str:
        return self._address

    # -- methods ----------------------------------------------------------------------
    @dbus_method()
    async def Connect(self) -> NoReply:
        await self.owner.device_connect(self)

    @dbus_method()
    async def Disconnect(self) -> NoReply:
        await self.owner.device_disconnect(self)

    @dbus_method()
    def Pair(self) -> NoReply:
        # Just Works pairing always succeeds here: the virtual link has no security.
        if not self._paired:
            self._paired = True
            self.emit_properties_changed({"Paired": True, "Bonded": True})

    @dbus_method()
    def CancelPairing(self) -> NoReply:
        return None

    # -- properties -------------------------------------------------------------------
    @dbus_property(access=READ)
    def Address(self) -> DBusStr:
        return self._address

    @dbus_property(access=READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return self._name

    @dbus_property()
    def Alias(self) -> DBusStr:
        return self._alias

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr) -> None:
        self._alias = value or self._name

    @dbus_property(access=READ)
    def Adapter(self) -> DBusObjectPath:
        return self._adapter_path

    @dbus_property(access=READ)
    def RSSI(self) -> DBusInt16:
        return self._rssi

    @dbus_property(access=READ)
    def UUIDs(self) -> DBusStrList:
        return self._uuids

    @dbus_property(access=READ)
    def ManufacturerData(self) -> DBusManufacturerData:
        return self._manufacturer

    @dbus_property(access=READ)
    def ServiceData(self) -> DBusDict:
        return self._service_data

    @dbus_property(access=READ)
    def Connected(self) -> DBusBool:
        return self._connected

    @dbus_property(access=READ)
    def ServicesResolved(self) -> DBusBool:
        return self._resolved

    @dbus_property(access=READ)
    def Paired(self) -> DBusBool:
        return self._paired

    @dbus_property(access=READ)
    def Bonded(self) -> DBusBool:
        return self._paired

    @dbus_property()
    def Trusted(self) -> DBusBool:
        return self._trusted

    @Trusted.setter  # type: ignore[no-redef]
    def Trusted(self, value: DBusBool) -> None:
        self._trusted = value

    @dbus_property()
    def Blocked(self) -> DBusBool:
        return self._blocked

    @Blocked.setter  # type: ignore[no-redef]
    def Blocked(self, value: DBusBool) -> None:
        self._blocked = value

    @dbus_property(access=READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Class(self) -> DBusUInt32:
        return 0


class GattOwner(Protocol):
    """What a mirrored attribute forwards to: the connection to the remote node."""

    mtu: int

    async def read(
        self, attr: MirroredAttribute, interface: str, options: dict[str, Variant]
    ) -> bytes: ...
    async def write(
        self, attr: MirroredAttribute, interface: str, value: bytes, options: dict[str, Variant]
    ) -> None: ...
    async def start_notify(self, char: MirroredCharacteristic) -> None: ...
    async def stop_notify(self, char: MirroredCharacteristic) -> None: ...
    async def acquire_write(self, char: MirroredCharacteristic) -> list[int]: ...
    async def acquire_notify(self, char: MirroredCharacteristic) -> list[int]: ...


class MirroredService(ServiceInterface):
    def __init__(self, *, path: str, device: str, uuid: str, primary: bool) -> None:
        super().__init__(GATT_SERVICE_INTERFACE)
        self.path = path
        self._device = device
        self._uuid = uuid
        self._primary = primary

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=READ)
    def Primary(self) -> DBusBool:
        return self._primary

    @dbus_property(access=READ)
    def Device(self) -> DBusObjectPath:
        return self._device

    @dbus_property(access=READ)
    def Includes(self) -> Annotated[list[str], DBusSignature("ao")]:
        return []


class MirroredCharacteristic(ServiceInterface):
    """A remote characteristic; calls are forwarded to the peripheral's application."""

    def __init__(
        self,
        owner: GattOwner,
        *,
        path: str,
        service: str,
        uuid: str,
        flags: tuple[str, ...],
        remote: tuple[str, str],
    ) -> None:
        super().__init__(GATT_CHARACTERISTIC_INTERFACE)
        self.owner = owner
        self.path = path
        self.remote = remote  # (owner bus name, object path) in the peripheral's app
        self._service = service
        self._uuid = uuid
        self.flags = tuple(flags)
        self._value = b""
        self.notifying = False
        self.write_acquired = False
        self.notify_acquired = False

    def set_value(self, value: bytes) -> None:
        self._value = value
        self.emit_properties_changed({"Value": value})

    def set_notifying(self, notifying: bool) -> None:
        if notifying != self.notifying:
            self.notifying = notifying
            self.emit_properties_changed({"Notifying": notifying})

    def set_write_acquired(self, acquired: bool) -> None:
        if acquired != self.write_acquired:
            self.write_acquired = acquired
            self.emit_properties_changed({"WriteAcquired": acquired})

    def set_notify_acquired(self, acquired: bool) -> None:
        if acquired != self.notify_acquired:
            self.notify_acquired = acquired
            self.notifying = acquired
            self.emit_properties_changed({"NotifyAcquired": acquired, "Notifying": acquired})

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        value = await self.owner.read(self, GATT_CHARACTERISTIC_INTERFACE, options)
        self._value = value
        return value

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict) -> NoReply:
        await self.owner.write(self, GATT_CHARACTERISTIC_INTERFACE, value, options)

    @dbus_method()
    async def StartNotify(self) -> NoReply:
        await self.owner.start_notify(self)

    @dbus_method()
    async def StopNotify(self) -> NoReply:
        await self.owner.stop_notify(self)

    @dbus_method()
    async def AcquireWrite(self, options: DBusDict) -> FdAndMtu:
        return await self.owner.acquire_write(self)

    @dbus_method()
    async def AcquireNotify(self, options: DBusDict) -> FdAndMtu:
        return await self.owner.acquire_notify(self)

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=READ)
    def Service(self) -> DBusObjectPath:
        return self._service

    @dbus_property(access=READ)
    def Value(self) -> DBusBytes:
        return self._value

    @dbus_property(access=READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=READ)
    def Flags(self) -> DBusStrList:
        return list(self.flags)

    @dbus_property(access=READ)
    def MTU(self) -> DBusUInt16:
        return self.owner.mtu

    @dbus_property(access=READ)
    def WriteAcquired(self) -> DBusBool:
        return self.write_acquired

    @dbus_property(access=READ)
    def NotifyAcquired(self) -> DBusBool:
        return self.notify_acquired


class MirroredDescriptor(ServiceInterface):
    def __init__(
        self,
        owner: GattOwner,
        *,
        path: str,
        characteristic: str,
        uuid: str,
        flags: tuple[str, ...],
        remote: tuple[str, str],
    ) -> None:
        super().__init__(GATT_DESCRIPTOR_INTERFACE)
        self.owner = owner
        self.path = path
        self.remote = remote
        self._characteristic = characteristic
        self._uuid = uuid
        self.flags = tuple(flags)
        self._value = b""

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        value = await self.owner.read(self, GATT_DESCRIPTOR_INTERFACE, options)
        self._value = value
        return value

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict) -> NoReply:
        await self.owner.write(self, GATT_DESCRIPTOR_INTERFACE, value, options)

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=READ)
    def Characteristic(self) -> DBusObjectPath:
        return self._characteristic

    @dbus_property(access=READ)
    def Value(self) -> DBusBytes:
        return self._value

    @dbus_property(access=READ)
    def Flags(self) -> DBusStrList:
        return list(self.flags)


MirroredAttribute = MirroredCharacteristic | MirroredDescriptor
