"""The simulated neighbourhood: nodes (each with its own bus and BlueZ) sharing one air."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from dbus_fast.errors import DBusError

from meshd.errors import InvalidArgument, MeshdError, NotFound

from .air import Air, AirEvent, ConnectionLost, PowerChanged
from .device import Device
from .link import Link
from .node import ERR_FAILED, VirtualNode

# BlueZ forgets a temporary (unpaired, unconnected) device it has not heard for this long
# (main.conf TemporaryTimeout, default 30 s).
DEFAULT_DEVICE_TIMEOUT = 30.0


class World:
    """Start nodes, place them in the air, inject faults; routes traffic between buses."""

    def __init__(
        self,
        *,
        seed: int = 0,
        scan_interval: float = 0.1,
        device_timeout: float = DEFAULT_DEVICE_TIMEOUT,
        connect_delay: float = 0.0,
    ) -> None:
        if scan_interval <= 0:
            raise InvalidArgument("must be > 0", field="scan_interval")
        self.air = Air(seed=seed)
        self.nodes: dict[str, VirtualNode] = {}
        self.scan_interval = scan_interval
        self.device_timeout = device_timeout
        self.connect_delay = connect_delay
        self._next_address = 1
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> World:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- nodes --------------------------------------------------------------------------
    async def add_node(
        self, name: str, *, address: str | None = None, powered: bool = True
    ) -> VirtualNode:
        """Start a private bus with a virtual BlueZ (hci0) for a new node."""
        if address is None:
            n = self._next_address
            self._next_address += 1
            # Locally administered unicast addresses: never collide with a real vendor's.
            address = f"02:00:00:00:{n >> 8:02X}:{n & 0xFF:02X}"
        if any(n.address == address.upper() for n in self.nodes.values()):
            raise InvalidArgument(f"address {address} is taken", field="address")
        self.air.add_node(name, powered=powered)
        node = VirtualNode(self, name, address)
        try:
            await node.start()
        except BaseException:
            self.air.remove_node(name)
            await node.stop()
            raise
        self.nodes[name] = node
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return node

    def node(self, name: str) -> VirtualNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise NotFound(f"no node {name!r}", field="name") from None

    async def remove_node(self, name: str) -> None:
        node = self.node(name)
        self._apply(self.air.remove_node(name))
        del self.nodes[name]
        await node.stop()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for task in list(self._tasks):
            task.cancel()
        for name in list(self.nodes):
            await self.nodes.pop(name).stop()

    # -- the air: placement and faults --------------------------------------------------
    def set_link(
        self, a: str, b: str, *, rssi: int = -60, mtu: int = 517, loss: float = 0.0
    ) -> None:
        """a and b hear each other with these conditions (MTU applies to new connections)."""
        self.air.set_link(a, b, rssi=rssi, mtu=mtu, loss=loss)

    def cut_link(self, a: str, b: str) -> None:
        """Move a and b out of range; a connection between them drops at once."""
        self._apply(self.air.cut_link(a, b))

    def set_powered(self, name: str, powered: bool) -> None:
        """Power an adapter off or on (as `bluetoothctl power off` would)."""
        self._apply(self.air.set_powered(name, powered))

    def drop_connection(self, a: str, b: str) -> None:
        """Fault injection: the LE connection between a and b dies (supervision timeout)."""
        self._apply(self.air.drop_connection(a, b))

    # -- routing between nodes ----------------------------------------------------------
    async def connect(self, central: VirtualNode, device: Device) -> None:
        if central.links.get(device.peer) is not None:
            return  # BlueZ answers Connect on a connected device with success
        peripheral = self.nodes.get(device.peer)
        if peripheral is None:
            raise DBusError(ERR_FAILED, "Page Timeout")
        if not peripheral.connectable():
            raise DBusError(ERR_FAILED, f"{device.address} is not connectable")
        try:
            params = self.air.connect(central.name, peripheral.name)
        except MeshdError as exc:
            raise DBusError(ERR_FAILED, f"le-connection-abort-by-remote: {exc}") from exc
        if self.connect_delay > 0:
            await asyncio.sleep(self.connect_delay)
            if not self.air.connected(central.name, peripheral.name):
                raise DBusError(ERR_FAILED, "connection lost while connecting")
        link = Link(central, peripheral, device, params.mtu)
        central.links[peripheral.name] = link
        now = asyncio.get_running_loop().time()
        peripheral.central_connected(central, now)
        device.set_connected(True)
        link.build(peripheral.gatt_table())
        device.set_services_resolved(True)

    async def disconnect(self, node: VirtualNode, device: Device) -> None:
        """Either side called Device1.Disconnect."""
        other = self.nodes.get(device.peer)
        if node.links.get(device.peer) is not None:
            central, peripheral = node, other
        elif other is not None and node.name in other.links:
            central, peripheral = other, node
        else:
            return  # BlueZ: disconnecting a disconnected device succeeds
        assert peripheral is not None
        self.air.disconnect(central.name, peripheral.name)
        await self._teardown(central, peripheral)

    def notify(self, peripheral: VirtualNode, remote: tuple[str, str], value: bytes) -> None:
        """The peripheral's app changed a characteristic's Value: notify subscribed links."""
        for node in self.nodes.values():
            link = node.links.get(peripheral.name)
            if link is not None:
                link.deliver(remote, value)

    def scan_soon(self, node: VirtualNode) -> None:
        asyncio.get_running_loop().call_soon(self._scan, node)

    # -- internals ----------------------------------------------------------------------
    def _apply(self, events: list[AirEvent]) -> None:
        for event in events:
            if isinstance(event, ConnectionLost):
                central = self.nodes.get(event.central)
                peripheral = self.nodes.get(event.peripheral)
                if (
                    central is not None
                    and peripheral is not None
                    and self._close_link(central, peripheral)
                ):
                    self._spawn(peripheral.central_disconnected(central))
            elif isinstance(event, PowerChanged):
                node = self.nodes.get(event.node)
                if node is not None:
                    node.power_changed(event.powered)

    async def _teardown(self, central: VirtualNode, peripheral: VirtualNode) -> None:
        if self._close_link(central, peripheral):
            await peripheral.central_disconnected(central)

    @staticmethod
    def _close_link(central: VirtualNode, peripheral: VirtualNode) -> bool:
        """Central side of a disconnection: Connected=False, GATT objects removed."""
        link = central.links.pop(peripheral.name, None)
        if link is None:
            return False
        link.device.set_connected(False)
        link.close()
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Signals of the synchronous part (Connected=False) go out before this returns;
        # only the peripheral-side StopNotify calls run later.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _scan(self, node: VirtualNode) -> None:
        if not (node.discovering and node.powered) or node.name not in self.nodes:
            return
        now = asyncio.get_running_loop().time()
        for peer_name in self.air.neighbours(node.name):
            peer = self.nodes.get(peer_name)
            if peer is None or not peer.advertisements:
                continue
            params = self.air.link(node.name, peer_name)
            if params is not None and self.air.heard(node.name, peer_name):
                node.heard_advertisement(peer, params.rssi, now)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval)
            now = asyncio.get_running_loop().time()
            for node in list(self.nodes.values()):
                try:
                    self._scan(node)
                    node.expire_devices(older_than=now - self.device_timeout)
                except DBusError:
                    continue  # a node being stopped; the others keep running
