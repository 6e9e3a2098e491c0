"""One BleTransport in this process against a virtual BlueZ node: status follows the
adapter (power off/on, bluetoothd restart), a failed task rebuilds everything, and the
advertisement carries the node summary (read by a raw D-Bus scan from a second node)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from meshd.crypto.identity import Identity
from meshd.router.events import LinkId
from meshd.testing.virtual_bluez import World, dbus_daemon_path
from meshd.transports.base import Link, TransportState

pytestmark = [
    pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon not installed"),
    pytest.mark.timeout(60),
]
pytest.importorskip("bleak")
pytest.importorskip("bless")

from meshd.transports.ble import BleConfig, BleTransport  # noqa: E402
from meshd.transports.ble_advert import COMPANY_ID, SERVICE_UUID, AdvertSummary  # noqa: E402


class _Events:
    def link_up(self, link: Link) -> LinkId:
        raise AssertionError("no peer in range")

    def frame_received(self, link_id: LinkId, frame: bytes) -> None:
        raise AssertionError

    def link_down(self, link_id: LinkId) -> None:
        raise AssertionError


async def _release_bleak() -> None:
    """Close bleak's shared connection before the bus stops (see test_virtual_bluez.py)."""
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
        w.add_cleanup(_release_bleak)
        yield w


async def _until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _start(world: World, monkeypatch: pytest.MonkeyPatch) -> BleTransport:
    node = await world.add_node("a")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", node.bus_address)
    ble = BleTransport(
        Identity.generate(),
        config=BleConfig(backoff_initial=0.1),
        summary=lambda: (42, True, 0x12345678),
    )
    world.add_cleanup(ble.stop)
    await ble.start(_Events())
    await _until(lambda: ble.status().state is TransportState.RUNNING
                 and ble.status().detail == "ok", "BLE running")
    return ble


async def test_status_follows_power_and_bluetoothd(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ble = await _start(world, monkeypatch)
    world.set_powered("a", False)
    await _until(lambda: ble.status().state is TransportState.DEGRADED, "degraded")
    assert ble.status().detail == "down: adapter hci0 powered off"
    world.set_powered("a", True)
    await _until(lambda: ble.status().state is TransportState.RUNNING, "running again")
    restart = asyncio.ensure_future(world.restart_bluez("a", down_for=1.0))
    await _until(lambda: ble.status().detail == "down: bluetoothd not running",
                 "bluetoothd reported gone")
    assert ble.status().state is TransportState.DEGRADED
    await restart
    await _until(lambda: ble.status().state is TransportState.RUNNING, "running after restart")
    assert world.errors == []


async def test_a_failed_task_rebuilds_the_transport(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ble = await _start(world, monkeypatch)
    original = ble._scanner
    calls = 0

    async def failing_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("scanner broke")
        await original()

    monkeypatch.setattr(ble, "_scanner", failing_once)
    ble._broken = True  # as _task_done does; the supervisor must rebuild
    ble._wake_sup.set()
    await _until(lambda: calls >= 2 and ble.status().state is TransportState.RUNNING,
                 "rebuilt after the scanner failed twice")


async def test_advertisement_carries_the_summary(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    ble = await _start(world, monkeypatch)
    scanner = await world.add_node("s")
    world.set_link("a", "s", rssi=-50, mtu=185)
    bus = await MessageBus(bus_address=scanner.bus_address).connect()
    try:
        async def call(path: str, iface: str, member: str, sig: str = "", body: Any = ()) -> Any:
            reply = await bus.call(Message(destination="org.bluez", path=path, interface=iface,
                                           member=member, signature=sig, body=list(body)))
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
            return reply.body

        await call("/org/bluez/hci0", "org.bluez.Adapter1", "StartDiscovery")
        found: dict[str, Any] = {}

        async def scan() -> bool:
            (objects,) = await call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
            for props in objects.values():
                dev = props.get("org.bluez.Device1")
                if dev and SERVICE_UUID in dev["UUIDs"].value and "ManufacturerData" in dev:
                    found.update(dev)
                    return COMPANY_ID in dev["ManufacturerData"].value
            return False

        deadline = time.monotonic() + 10
        while not await scan():
            assert time.monotonic() < deadline, "meshd advertisement not seen"
            await asyncio.sleep(0.1)
        data = found["ManufacturerData"].value[COMPANY_ID].value
        summary = AdvertSummary.decode(bytes(data))
        assert summary.battery == 42 and summary.charging
        assert summary.free_slots == 4 and summary.cluster == 0x1234 ^ 0x5678
        assert summary.addr == ble.identity.address.raw[:2]
    finally:
        bus.disconnect()
