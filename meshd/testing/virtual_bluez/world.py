"""The simulated neighbourhood: nodes (each with its own bus and BlueZ) sharing one air."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
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
LEGACY_ADV_DATA_LEN = 31


class World:
    """Start nodes, place them in the air, inject faults; routes traffic between buses."""

    def __init__(
        self,
        *,
        seed: int = 0,
        scan_interval: float = 0.1,
        device_timeout: float = DEFAULT_DEVICE_TIMEOUT,
        connect_delay: float = 0.0,
        adv_data_limit: int | None = LEGACY_ADV_DATA_LEN,
    ) -> None:
        if scan_interval <= 0:
            raise InvalidArgument("must be > 0", field="scan_interval")
        self.air = Air(seed=seed)
        self.nodes: dict[str, VirtualNode] = {}
        self.scan_interval = scan_interval
        self.device_timeout = device_timeout
        self.connect_delay = connect_delay
        # Largest advertising data an advertisement may need; None: no limit. 31 is legacy
        # advertising (Core 5.3 Vol 6 Part B 2.3.1.3); extended advertising allows more.
        self.adv_data_limit = adv_data_limit
        self._next_address = 1
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        # Unexpected exceptions of background work (scanning, teardown): a test bed must
        # not hide its own bugs, so tests assert this stays empty.
        self.errors: list[BaseException] = []

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

    def add_cleanup(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run cleanup (last added first) in close(), while the buses are still up.

        Clients should leave a bus before its dbus-daemon stops: otherwise their
        libraries see end-of-file and may leave failed futures nobody retrieves.
        """
        self._cleanups.append(cleanup)

    async def close(self) -> None:
        while self._cleanups:
            with contextlib.suppress(Exception):
                await self._cleanups.pop()()
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

    async def restart_bluez(self, name: str, *, down_for: float = 0.0) -> None:
        """Fault injection: bluetoothd of name exits (its connections drop, its apps lose
        their registrations) and is back on the same bus after down_for seconds."""
        node = self.node(name)
        self._apply(self.air.drop_connections_of(name, "bluetoothd restarted"))
        await node.restart(down_for=down_for)

    # -- routing between nodes ----------------------------------------------------------
    async def connect(self, node: VirtualNode, device: Device) -> None:
        """node called Device1.Connect: open the connection, or reuse the one that exists
        (the peer connected to us), then resolve the peer's GATT services over it."""
        if device.peer in node.links:
            return  # BlueZ answers Connect on a connected device with success
        peer = self.nodes.get(device.peer)
        if peer is None:
            raise DBusError(ERR_FAILED, "Page Timeout")
        mtu = self.air.connection_mtu(node.name, peer.name)
        if mtu is None:
            if not peer.connectable():
                raise DBusError(ERR_FAILED, f"{device.address} is not connectable")
            try:
                mtu = self.air.connect(node.name, peer.name).mtu
            except MeshdError as exc:
                raise DBusError(ERR_FAILED, f"le-connection-abort-by-remote: {exc}") from exc
            if self.connect_delay > 0:
                await asyncio.sleep(self.connect_delay)
                if self.air.connection_between(node.name, peer.name) is None:
                    raise DBusError(ERR_FAILED, "connection lost while connecting")
            now = asyncio.get_running_loop().time()
            peer.acl_up(node, now)
            node.acl_up(peer, now)
        link = Link(node, peer, device, mtu)
        node.links[peer.name] = link
        link.build(peer.gatt_table())
        device.set_services_resolved(True)

    async def disconnect(self, node: VirtualNode, device: Device) -> None:
        """Either side called Device1.Disconnect: the one connection between them ends."""
        peer = self.nodes.get(device.peer)
        if peer is None or not self.air.disconnect(node.name, peer.name):
            return  # BlueZ: disconnecting a disconnected device succeeds
        for release in self._connection_down(node, peer):
            await release

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
                a = self.nodes.get(event.central)
                b = self.nodes.get(event.peripheral)
                if a is not None and b is not None:
                    for release in self._connection_down(a, b):
                        self._spawn(release)
            elif isinstance(event, PowerChanged):
                node = self.nodes.get(event.node)
                if node is not None:
                    node.power_changed(event.powered)

    @staticmethod
    def _connection_down(a: VirtualNode, b: VirtualNode) -> list[Coroutine[Any, Any, None]]:
        """Both sides see Connected=False and lose their mirrors now; the returned
        coroutines end the subscriptions each had on the other's apps."""
        now = asyncio.get_running_loop().time()
        a.acl_down(b, now)
        b.acl_down(a, now)
        return [a.release_subscriptions(b), b.release_subscriptions(a)]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Signals of the synchronous part (Connected=False) go out before this returns;
        # only the peripheral-side StopNotify calls run later.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.errors.append(exc)

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
                except Exception as exc:  # a bug: keep the air running, let tests see it
                    self.errors.append(exc)
