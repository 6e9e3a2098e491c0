"""Plain data the virtual BlueZ reads from applications: advertisements and GATT tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Variant

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

    @classmethod
    def from_properties(cls, owner: str, path: str, props: dict[str, Any]) -> Advertisement:
        """Build from unpacked LEAdvertisement1 properties; bad values name the field."""
        adv_type = props.get("Type", "peripheral")
        if adv_type not in ("peripheral", "broadcast"):
            raise InvalidArgument(f"unknown advertisement type {adv_type!r}", field="Type")
        try:
            manufacturer = {int(k): bytes(v) for k, v in props.get("ManufacturerData", {}).items()}
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(str(exc), field="ManufacturerData") from exc
        try:
            service_data = {str(k): bytes(v) for k, v in props.get("ServiceData", {}).items()}
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(str(exc), field="ServiceData") from exc
        name = props.get("LocalName")
        tx = props.get("TxPower")
        return cls(
            owner=owner,
            path=path,
            type=adv_type,
            service_uuids=tuple(str(u).lower() for u in props.get("ServiceUUIDs", [])),
            manufacturer_data=manufacturer,
            service_data=service_data,
            local_name=str(name) if name else None,
            includes=tuple(str(i) for i in props.get("Includes", [])),
            tx_power=int(tx) if isinstance(tx, int) else None,
        )


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


def parse_application(owner: str, objects: dict[str, dict[str, Any]]) -> list[AppService]:
    """Turn an app's unpacked GetManagedObjects reply into its GATT table (sorted by path)."""
    services: list[AppService] = []
    for spath in sorted(objects):
        sprops = objects[spath].get(GATT_SERVICE_INTERFACE)
        if sprops is None:
            continue
        chars: list[AppCharacteristic] = []
        for cpath in sorted(objects):
            cprops = objects[cpath].get(GATT_CHARACTERISTIC_INTERFACE)
            if cprops is None or cprops.get("Service") != spath:
                continue
            descs = tuple(
                AppDescriptor(owner, dpath, _uuid(dprops, dpath), tuple(dprops.get("Flags", [])))
                for dpath in sorted(objects)
                if (dprops := objects[dpath].get(GATT_DESCRIPTOR_INTERFACE)) is not None
                and dprops.get("Characteristic") == cpath
            )
            chars.append(
                AppCharacteristic(
                    owner, cpath, _uuid(cprops, cpath), tuple(cprops.get("Flags", [])), descs
                )
            )
        services.append(
            AppService(
                owner,
                spath,
                _uuid(sprops, spath),
                bool(sprops.get("Primary", True)),
                tuple(chars),
            )
        )
    return services


def _uuid(props: dict[str, Any], path: str) -> str:
    uuid = props.get("UUID")
    if not isinstance(uuid, str) or not uuid:
        raise InvalidArgument(f"object {path} has no UUID", field="UUID")
    return uuid.lower()


def bytes_dict_variant(data: dict[Any, bytes]) -> dict[Any, Variant]:
    return {k: Variant("ay", v) for k, v in data.items()}
