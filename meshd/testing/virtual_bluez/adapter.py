"""The adapter side of org.bluez: Adapter1, LEAdvertisingManager1, GattManager1.

Follows BlueZ's doc/org.bluez.Adapter.rst, LEAdvertisingManager.rst and GattManager.rst;
the behaviour lives in the owner (``node.py``), reached through ``AdapterOwner``.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from dbus_fast.annotations import (
    DBusBool,
    DBusByte,
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

ADAPTER_INTERFACE = "org.bluez.Adapter1"
ADV_MANAGER_INTERFACE = "org.bluez.LEAdvertisingManager1"
GATT_MANAGER_INTERFACE = "org.bluez.GattManager1"
ROOT_INTERFACE = "org.meshd.VirtualBluez1"
DBusStrList = Annotated[list[str], DBusSignature("as")]
READ = PropertyAccess.READ
# A method without out-arguments; a bare "-> None" is not understood by dbus-fast.
NoReply = Annotated[None, DBusSignature("")]
# BlueZ reports how many advertising sets the controller has; 4 is a common figure.
SUPPORTED_ADVERTISEMENTS = 4


class AdapterOwner(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def alias(self) -> str: ...
    @property
    def powered(self) -> bool: ...
    @property
    def discovering(self) -> bool: ...

    def set_powered(self, powered: bool) -> None: ...
    def set_alias(self, alias: str) -> None: ...
    def start_discovery(self) -> None: ...
    def stop_discovery(self) -> None: ...
    def set_discovery_filter(self, options: DBusDict) -> None: ...
    async def remove_device(self, path: str) -> None: ...
    async def register_advertisement(self, path: str) -> None: ...
    def unregister_advertisement(self, path: str) -> None: ...
    def active_advertisements(self) -> int: ...
    async def register_application(self, path: str) -> None: ...
    def unregister_application(self, path: str) -> None: ...


class Root(ServiceInterface):
    """Exported at "/" so that introspecting "/" shows ObjectManager (bless needs it)."""

    def __init__(self, node: str) -> None:
        super().__init__(ROOT_INTERFACE)
        self._node = node

    @dbus_property(access=READ)
    def Node(self) -> DBusStr:
        return self._node


class Adapter(ServiceInterface):
    def __init__(self, owner: AdapterOwner) -> None:
        super().__init__(ADAPTER_INTERFACE)
        self.owner = owner

    @dbus_method()
    def StartDiscovery(self) -> NoReply:
        self.owner.start_discovery()

    @dbus_method()
    def StopDiscovery(self) -> NoReply:
        self.owner.stop_discovery()

    @dbus_method()
    def SetDiscoveryFilter(self, options: DBusDict) -> NoReply:
        self.owner.set_discovery_filter(options)

    @dbus_method()
    def GetDiscoveryFilters(self) -> DBusStrList:
        return ["UUIDs", "RSSI", "Transport", "DuplicateData", "Discoverable", "Pattern"]

    @dbus_method()
    async def RemoveDevice(self, device: DBusObjectPath) -> NoReply:
        await self.owner.remove_device(device)

    @dbus_property(access=READ)
    def Address(self) -> DBusStr:
        return self.owner.address

    @dbus_property(access=READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return self.owner.name

    @dbus_property()
    def Alias(self) -> DBusStr:
        return self.owner.alias

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr) -> None:
        self.owner.set_alias(value)

    @dbus_property(access=READ)
    def Class(self) -> DBusUInt32:
        return 0

    @dbus_property()
    def Powered(self) -> DBusBool:
        return self.owner.powered

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: DBusBool) -> None:
        self.owner.set_powered(value)

    @dbus_property(access=READ)
    def PowerState(self) -> DBusStr:
        return "on" if self.owner.powered else "off"

    @dbus_property(access=READ)
    def Discoverable(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Pairable(self) -> DBusBool:
        return True

    @dbus_property(access=READ)
    def Discovering(self) -> DBusBool:
        return self.owner.discovering

    @dbus_property(access=READ)
    def UUIDs(self) -> DBusStrList:
        return []

    @dbus_property(access=READ)
    def Modalias(self) -> DBusStr:
        return "usb:v1D6Bp0246d0540"  # Linux Foundation / BlueZ 5.64, as bluetoothd says

    @dbus_property(access=READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]


class AdvertisingManager(ServiceInterface):
    def __init__(self, owner: AdapterOwner) -> None:
        super().__init__(ADV_MANAGER_INTERFACE)
        self.owner = owner

    @dbus_method()
    async def RegisterAdvertisement(
        self, advertisement: DBusObjectPath, options: DBusDict
    ) -> NoReply:
        await self.owner.register_advertisement(advertisement)

    @dbus_method()
    def UnregisterAdvertisement(self, advertisement: DBusObjectPath) -> NoReply:
        self.owner.unregister_advertisement(advertisement)

    @dbus_property(access=READ)
    def ActiveInstances(self) -> DBusByte:
        return self.owner.active_advertisements()

    @dbus_property(access=READ)
    def SupportedInstances(self) -> DBusByte:
        return SUPPORTED_ADVERTISEMENTS - self.owner.active_advertisements()

    @dbus_property(access=READ)
    def SupportedIncludes(self) -> DBusStrList:
        return ["tx-power", "appearance", "local-name"]


class GattManager(ServiceInterface):
    def __init__(self, owner: AdapterOwner) -> None:
        super().__init__(GATT_MANAGER_INTERFACE)
        self.owner = owner

    @dbus_method()
    async def RegisterApplication(self, application: DBusObjectPath, options: DBusDict) -> NoReply:
        await self.owner.register_application(application)

    @dbus_method()
    def UnregisterApplication(self, application: DBusObjectPath) -> NoReply:
        self.owner.unregister_application(application)
