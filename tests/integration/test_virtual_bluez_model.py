"""What the virtual BlueZ reads from apps: advertisements and GATT trees (no D-Bus needed)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import InvalidArgument
from meshd.testing.virtual_bluez.model import (
    GATT_CHARACTERISTIC_INTERFACE,
    GATT_DESCRIPTOR_INTERFACE,
    GATT_SERVICE_INTERFACE,
    Advertisement,
    parse_application,
)

SVC, CHR, DSC = GATT_SERVICE_INTERFACE, GATT_CHARACTERISTIC_INTERFACE, GATT_DESCRIPTOR_INTERFACE

U1 = "6d657368-0001-4000-8000-00805f9b34fb"
U2 = "6d657368-0002-4000-8000-00805f9b34fb"
U3 = "6d657368-0003-4000-8000-00805f9b34fb"


def test_advertisement_as_bless_exports_it() -> None:
    adv = Advertisement.from_properties(
        ":1.5",
        "/org/bluez/app/advertisement1",
        {
            "Type": "peripheral",
            "ServiceUUIDs": ["6D657368-0001-4000-8000-00805F9B34FB"],
            "ManufacturerData": {0xFFFF: b"\x01\x02"},
            "ServiceData": {},
            "LocalName": "node",
            "TxPower": 20,
            "MinInterval": 100,
        },
    )
    assert adv.connectable
    assert adv.service_uuids == ("6d657368-0001-4000-8000-00805f9b34fb",)
    assert adv.manufacturer_data == {0xFFFF: b"\x01\x02"}
    assert adv.local_name == "node" and adv.tx_power == 20


@pytest.mark.parametrize(
    ("props", "field"),
    [
        ({"Type": "loud"}, "Type"),
        ({"ServiceUUIDs": "abc"}, "ServiceUUIDs"),
        ({"ServiceUUIDs": [1]}, "ServiceUUIDs"),
        ({"ServiceUUIDs": ["not-a-uuid"]}, "ServiceUUIDs"),
        ({"ServiceData": {"zz": b""}}, "ServiceData"),
        ({"ManufacturerData": {"x": b""}}, "ManufacturerData"),
        ({"ServiceData": {"u": 5}}, "ServiceData"),
        ({"LocalName": 3}, "LocalName"),
        ({"TxPower": 99}, "TxPower"),
        ({"Includes": [b"x"]}, "Includes"),
    ],
)
def test_bad_advertisement_fields_are_named(props: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        Advertisement.from_properties(":1.5", "/adv", props)
    assert err.value.field == field


def test_application_tree_is_grouped_and_sorted() -> None:
    objects: dict[str, Any] = {
        "/app": {"org.bluez": {}},
        "/app/s2": {SVC: {"UUID": "180F", "Primary": False}},
        "/app/s1": {SVC: {"UUID": U1.upper(), "Primary": True}},
        "/app/s1/c2": {CHR: {"UUID": U3, "Service": "/app/s1", "Flags": ["read"]}},
        "/app/s1/c1": {CHR: {"UUID": U2, "Service": "/app/s1", "Flags": ["notify"]}},
        "/app/s1/c1/d1": {DSC: {"UUID": "0x2901", "Characteristic": "/app/s1/c1", "Flags": []}},
        "/app/orphan": {CHR: {"UUID": U1, "Service": "/nowhere", "Flags": []}},
    }
    s1, s2 = parse_application(":1.9", objects)
    assert (s1.uuid, s1.primary) == (U1, True)
    assert (s2.uuid, s2.primary) == ("0000180f-0000-1000-8000-00805f9b34fb", False)
    assert [c.uuid for c in s1.characteristics] == [U2, U3]
    assert s1.characteristics[0].key == (":1.9", "/app/s1/c1")
    assert [d.uuid for d in s1.characteristics[0].descriptors] == [
        "00002901-0000-1000-8000-00805f9b34fb"
    ]
    assert s2.characteristics == ()


def test_application_without_uuid_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="/app/s1/c1") as err:
        parse_application(
            ":1.9",
            {
                "/app/s1": {SVC: {"UUID": U1}},
                "/app/s1/c1": {CHR: {"Service": "/app/s1", "Flags": []}},
            },
        )
    assert err.value.field == "UUID"


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=3)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "Type",
        "ServiceUUIDs",
        "ManufacturerData",
        "ServiceData",
        "LocalName",
        "TxPower",
        "Includes",
        "UUID",
        "Service",
        "Characteristic",
        "Flags",
        "Primary",
    ]
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_any_advertisement_properties_parse_or_fail_cleanly(props: dict[str, Any]) -> None:
    try:
        Advertisement.from_properties(":1.1", "/adv", props)
    except InvalidArgument as exc:
        assert exc.field


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["/a", "/a/s", "/a/s/c", "/a/s/c/d"]),
        st.dictionaries(
            st.sampled_from([SVC, CHR, DSC, "x"]),
            st.dictionaries(_keys, _values, max_size=4) | _values,
            max_size=3,
        ),
        max_size=4,
    )
)
def test_any_application_tree_parses_or_fails_cleanly(objects: dict[str, Any]) -> None:
    try:
        parse_application(":1.1", objects)
    except InvalidArgument as exc:
        assert exc.field


def test_advertising_data_length_counts_ad_structures() -> None:
    def length(**props: Any) -> int:
        return Advertisement.from_properties(":1.1", "/adv", props).data_length()

    assert length(ServiceUUIDs=[U1]) == 3 + 18  # what bless registers: flags + one UUID
    assert length(ServiceUUIDs=[U1], ManufacturerData={0xFFFF: b"123456"}) == 31
    assert length(ServiceUUIDs=["180d", "180f"]) == 3 + 2 + 4  # 16-bit UUIDs share one AD
    assert length(Type="broadcast", ServiceData={"feaa": b"abcd"}) == 2 + 2 + 4
    assert length(LocalName="x" * 40) == 3  # the name goes to the scan response
    assert length(Includes=["tx-power", "appearance"]) == 3 + 3 + 4
