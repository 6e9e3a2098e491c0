"""Plain data the virtual BlueZ reads from applications: advertisements and GATT tables."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from meshd.errors import InvalidArgument

ADVERTISEMENT_INTERFACE = "org.bluez.LEAdvertisement1"
GATT_SERVICE_INTERFACE = "org.bluez.GattService1"
GATT_CHARACTERISTIC_INTERFACE = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR_INTERFACE = "org.bluez.GattDescriptor1"


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One registered LEAdvertisement1, as read from the app when it registered."""

    owner: str  # unique bus name of the app
    path: str
    type: str = "peripheral"
    service_uuids: tuple[str, ...] = ()
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    local_name: str | None = None
    includes: tuple[str, ...] = ()
    tx_power: int | None = None

    @property
    def connectable(self) -> bool:
        return self.type == "peripheral"

    def data_length(self) -> int:
        """Bytes of advertising data BlueZ would build (Core 5.3 Vol 3 Part C 11: each AD
        structure is length + type + payload). The local name goes to the scan response,
        where BlueZ shortens it to fit, so it never makes registration fail."""
        total = 3 if self.connectable else 0  # Flags: LE General Discoverable, no BR/EDR
        by_size: dict[int, int] = {}
        for u in self.service_uuids:
            by_size[uuid_size(u)] = by_size.get(uuid_size(u), 0) + 1
        total += sum(2 + size * count for size, count in by_size.items())
        total += sum(2 + 2 + len(data) for data in self.manufacturer_data.values())
        total += sum(2 + uuid_size(u) + len(data) for u, data in self.service_data.items())
        if "tx-power" in self.includes:
            total += 3
        if "appearance" in self.includes:
            total += 4
        return total

    @classmethod
    def from_properties(cls, owner: str, path: str, props: dict[str, Any]) -> Advertisement:
        """Build from unpacked LEAdvertisement1 properties; bad values name the field."""
        adv_type = props.get("Type", "peripheral")
        if adv_type not in ("peripheral", "broadcast"):
            raise InvalidArgument(f"unknown advertisement type {adv_type!r}", field="Type")
        name = props.get("LocalName")
        if name is not None and not isinstance(name, str):
            raise InvalidArgument("must be a string", field="LocalName")
        tx = props.get("TxPower")
        if tx is not None and (type(tx) is not int or not -127 <= tx <= 20):
            raise InvalidArgument("must be an int within -127..20 dBm", field="TxPower")
        return cls(
            owner=owner,
            path=path,
            type=adv_type,
            service_uuids=tuple(
                normalize_uuid(u, field="ServiceUUIDs") for u in _str_list(props, "ServiceUUIDs")
            ),
            manufacturer_data=_bytes_map(props, "ManufacturerData", int),
            service_data={
                normalize_uuid(k, field="ServiceData"): v
                for k, v in _bytes_map(props, "ServiceData", str).items()
            },
            local_name=name or None,
            includes=_str_list(props, "Includes"),
            tx_power=tx,
        )


def _str_list(props: dict[str, Any], field: str) -> tuple[str, ...]:
    value = props.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument("must be a list of strings", field=field)
    return tuple(value)


def _bytes_map(props: dict[str, Any], field: str, key_type: type) -> dict[Any, bytes]:
    value = props.get(field, {})
    if not isinstance(value, dict):
        raise InvalidArgument("must be a dictionary", field=field)
    out: dict[Any, bytes] = {}
    for key, data in value.items():
        if type(key) is not key_type or not isinstance(data, bytes | bytearray):
            raise InvalidArgument(f"entries must map {key_type.__name__} to bytes", field=field)
        out[key] = bytes(data)
    return out


@dataclass(frozen=True, slots=True)
class AppDescriptor:
    owner: str
    path: str
    uuid: str
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppCharacteristic:
    owner: str
    path: str
    uuid: str
    flags: tuple[str, ...]
    descriptors: tuple[AppDescriptor, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.owner, self.path)


@dataclass(frozen=True, slots=True)
class AppService:
    owner: str
    path: str
    uuid: str
    primary: bool
    characteristics: tuple[AppCharacteristic, ...] = ()


def parse_application(owner: str, objects: dict[str, Any]) -> list[AppService]:
    """Turn an app's unpacked GetManagedObjects reply into its GATT table (sorted by path)."""
    if not isinstance(objects, dict) or not all(isinstance(v, dict) for v in objects.values()):
        raise InvalidArgument("GetManagedObjects must return a{oa{sa{sv}}}", field="objects")
    tables = {iface: _objects_with(objects, iface) for iface in _GATT_INTERFACES}
    services: list[AppService] = []
    for spath, sprops in tables[GATT_SERVICE_INTERFACE].items():
        chars: list[AppCharacteristic] = []
        for cpath, cprops in tables[GATT_CHARACTERISTIC_INTERFACE].items():
            if cprops.get("Service") != spath:
                continue
            descs = tuple(
                AppDescriptor(owner, dpath, _uuid(dprops, dpath), _str_list(dprops, "Flags"))
                for dpath, dprops in tables[GATT_DESCRIPTOR_INTERFACE].items()
                if dprops.get("Characteristic") == cpath
            )
            chars.append(
                AppCharacteristic(
                    owner, cpath, _uuid(cprops, cpath), _str_list(cprops, "Flags"), descs
                )
            )
        primary = sprops.get("Primary", True)
        if not isinstance(primary, bool):
            raise InvalidArgument(f"object {spath}: must be a boolean", field="Primary")
        services.append(AppService(owner, spath, _uuid(sprops, spath), primary, tuple(chars)))
    return services


_GATT_INTERFACES = (
    GATT_SERVICE_INTERFACE,
    GATT_CHARACTERISTIC_INTERFACE,
    GATT_DESCRIPTOR_INTERFACE,
)


def _objects_with(objects: dict[str, Any], interface: str) -> dict[str, dict[str, Any]]:
    """Objects (sorted by path) that have interface, each as its property dictionary."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(objects):
        props = objects[path].get(interface)
        if props is None:
            continue
        if not isinstance(props, dict):
            raise InvalidArgument(f"object {path}: properties must be a{{sv}}", field=interface)
        out[path] = props
    return out


def _uuid(props: dict[str, Any], path: str) -> str:
    value = props.get("UUID")
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"object {path} has no UUID", field="UUID")
    return normalize_uuid(value, field="UUID")


# Bluetooth Base UUID (Core 5.3 Vol 3 Part B 2.5.1): 16/32-bit UUIDs are short forms of it.
_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


def uuid_size(normalized: str) -> int:
    """Bytes a (normalized) UUID takes in advertising data: 2, 4 or 16."""
    if normalized.endswith(_BASE_UUID_SUFFIX):
        return 2 if normalized.startswith("0000") else 4
    return 16


def normalize_uuid(value: str, *, field: str) -> str:
    """A UUID as BlueZ reports it: 128-bit, lower case (short forms expanded)."""
    text = value.lower().removeprefix("0x")
    if len(text) in (4, 8) and all(c in "0123456789abcdef" for c in text):
        return f"{int(text, 16):08x}{_BASE_UUID_SUFFIX}"
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidArgument(f"{value!r} is not a UUID", field=field) from None
