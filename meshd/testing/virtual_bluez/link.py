"""One LE connection seen from the central: mirrored GATT objects that forward to the peer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from dbus_fast import Variant
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface

from .acquire import AcquiredSocket
from .device import (
    Device,
    MirroredAttribute,
    MirroredCharacteristic,
    MirroredDescriptor,
    MirroredService,
)
from .model import AppService

if TYPE_CHECKING:
    from .node import VirtualNode

# An attribute value is at most 512 bytes (Core 5.3 Vol 3 Part F 3.2.9); longer reads and
# writes with response go through Read Blob / Prepare Write, which BlueZ does for the app.
MAX_ATTRIBUTE_LEN = 512
# ATT header of a Write Command / Handle Value Notification: opcode + handle.
ATT_HEADER = 3
# Which Flags allow which access (BlueZ's flag names; encryption is not modelled, so the
# encrypt-/secure- variants simply allow it). Else the peer answers "... Not Permitted".
READ_FLAGS = frozenset(
    {"read", "encrypt-read", "encrypt-authenticated-read", "secure-read", "authorize"}
)
WRITE_FLAGS = frozenset(
    {"write", "reliable-write", "encrypt-write", "encrypt-authenticated-write", "secure-write"}
)
COMMAND_FLAGS = frozenset({"write-without-response", "authenticated-signed-writes"})


class Link:
    """central → peripheral; implements device.GattOwner for the mirrored attributes."""

    def __init__(
        self, central: VirtualNode, peripheral: VirtualNode, device: Device, mtu: int
    ) -> None:
        self.central = central
        self.peripheral = peripheral
        self.device = device
        self.mtu = mtu
        self.open = True
        self._objects: list[tuple[str, ServiceInterface]] = []
        self.chars: dict[tuple[str, str], MirroredCharacteristic] = {}
        self._write_sockets: dict[tuple[str, str], AcquiredSocket] = {}
        self._notify_sockets: dict[tuple[str, str], AcquiredSocket] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def build(self, services: list[AppService]) -> None:
        """Export the peripheral's GATT table under the device path (service discovery)."""
        handle = 1
        for svc in services:
            spath = f"{self.device.path}/service{handle:04x}"
            handle += 1
            self._export(
                spath,
                MirroredService(
                    path=spath, device=self.device.path, uuid=svc.uuid, primary=svc.primary
                ),
            )
            for ch in svc.characteristics:
                cpath = f"{spath}/char{handle:04x}"
                handle += 2  # declaration + value handles
                mirror = MirroredCharacteristic(
                    self, path=cpath, service=spath, uuid=ch.uuid, flags=ch.flags, remote=ch.key
                )
                self.chars[ch.key] = mirror
                self._export(cpath, mirror)
                for desc in ch.descriptors:
                    dpath = f"{cpath}/desc{handle:04x}"
                    handle += 1
                    self._export(
                        dpath,
                        MirroredDescriptor(
                            self,
                            path=dpath,
                            characteristic=cpath,
                            uuid=desc.uuid,
                            flags=desc.flags,
                            remote=(desc.owner, desc.path),
                        ),
                    )

    def close(self) -> None:
        """The connection is gone: GATT objects disappear (nothing is cached here)."""
        self.open = False
        for sock in [*self._write_sockets.values(), *self._notify_sockets.values()]:
            sock.close()
        for task in self._tasks:
            task.cancel()
        bus = self.central._bus
        for path, iface in reversed(self._objects):
            if bus is not None:
                bus.unexport(path, iface)
        self._objects.clear()
        self.chars.clear()

    def deliver(self, remote: tuple[str, str], value: bytes) -> None:
        """A notification from the peripheral's app; truncated to what fits the MTU."""
        char = self.chars.get(remote)
        if not self.open or char is None:
            return
        sock = self._notify_sockets.get(remote)
        if sock is not None:
            sock.send(value)  # truncated to MTU-3 by the socket
        elif char.notifying:
            char.set_value(value[: self.mtu - ATT_HEADER])

    # -- GattOwner ----------------------------------------------------------------------
    async def read(
        self, attr: MirroredAttribute, interface: str, options: dict[str, Variant]
    ) -> bytes:
        self._check_open()
        if not READ_FLAGS.intersection(attr.flags):
            raise DBusError("org.bluez.Error.NotPermitted", "Read not permitted")
        value = await self.peripheral.app_read(
            attr.remote, interface, self._options(options, wtype=None)
        )
        self._check_open()
        return value[:MAX_ATTRIBUTE_LEN]

    async def write(
        self, attr: MirroredAttribute, interface: str, value: bytes, options: dict[str, Variant]
    ) -> None:
        self._check_open()
        given = options.get("type")
        if given is None:  # BlueZ picks by the characteristic's properties
            wtype = "request" if WRITE_FLAGS.intersection(attr.flags) else "command"
        else:
            wtype = str(given.value)
        if wtype not in ("request", "command", "reliable"):
            raise DBusError("org.bluez.Error.InvalidArguments", f"type: unknown {wtype!r}")
        allowed = COMMAND_FLAGS if wtype == "command" else WRITE_FLAGS
        if not allowed.intersection(attr.flags):
            raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")
        limit = self.mtu - ATT_HEADER if wtype == "command" else MAX_ATTRIBUTE_LEN
        if len(value) > limit:
            # BlueZ's mapping of ATT "Invalid Attribute Value Length" (bleak turns exactly
            # this name and text back into that ATT error).
            raise DBusError("org.bluez.Error.InvalidArguments", "Invalid Length")
        await self.peripheral.app_write(
            attr.remote, interface, value, self._options(options, wtype=wtype)
        )

    async def start_notify(self, char: MirroredCharacteristic) -> None:
        self._check_open()
        if not {"notify", "indicate"}.intersection(char.flags):
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        if char.notifying:
            return
        await self.peripheral.subscribe(char.remote, self.central.name)
        self._check_open()
        char.set_notifying(True)

    async def acquire_write(self, char: MirroredCharacteristic) -> list[int]:
        self._check_open()
        if "write-without-response" not in char.flags:
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        if char.write_acquired:
            raise DBusError("org.bluez.Error.NotPermitted", "Write acquired")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def released() -> None:
            self._write_sockets.pop(char.remote, None)
            queue.put_nowait(None)  # what the client wrote before closing still goes out
            char.set_write_acquired(False)

        sock = AcquiredSocket(
            packet_size=self.mtu - ATT_HEADER, on_packet=queue.put_nowait, on_close=released
        )
        self._spawn(self._forward_writes(char.remote, queue))
        self._write_sockets[char.remote] = sock
        char.set_write_acquired(True)
        return [self.central.hand_off(sock.take_client_fd()), self.mtu]

    async def acquire_notify(self, char: MirroredCharacteristic) -> list[int]:
        self._check_open()
        if not {"notify", "indicate"}.intersection(char.flags):
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        if char.notify_acquired or char.notifying:
            raise DBusError("org.bluez.Error.NotPermitted", "Notify acquired")
        await self.peripheral.subscribe(char.remote, self.central.name)
        self._check_open()

        def released() -> None:
            self._notify_sockets.pop(char.remote, None)
            char.set_notify_acquired(False)
            if self.open:
                self._spawn(self.peripheral.unsubscribe(char.remote, self.central.name))

        sock = AcquiredSocket(packet_size=self.mtu - ATT_HEADER, on_packet=None, on_close=released)
        self._notify_sockets[char.remote] = sock
        char.set_notify_acquired(True)
        return [self.central.hand_off(sock.take_client_fd()), self.mtu]

    async def stop_notify(self, char: MirroredCharacteristic) -> None:
        if char.notify_acquired:
            raise DBusError("org.bluez.Error.NotPermitted", "Notify acquired")
        if not char.notifying:
            raise DBusError("org.bluez.Error.Failed", "No notify session started")
        char.set_notifying(False)
        if self.open:
            await self.peripheral.unsubscribe(char.remote, self.central.name)

    # -- helpers ------------------------------------------------------------------------
    async def _forward_writes(
        self, remote: tuple[str, str], queue: asyncio.Queue[bytes | None]
    ) -> None:
        """Packets from an acquired write socket, in order, as Write Commands."""
        opts = self._options({}, wtype="command")
        iface = "org.bluez.GattCharacteristic1"
        while (data := await queue.get()) is not None:
            # A Write Command has no answer; a failing app loses the write, as on air.
            with contextlib.suppress(DBusError):
                await self.peripheral.app_write(remote, iface, data, opts)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_open(self) -> None:
        if not self.open:
            raise DBusError("org.bluez.Error.Failed", "Not connected")

    def _options(self, options: dict[str, Variant], *, wtype: str | None) -> dict[str, Variant]:
        """Options as BlueZ hands them to the server app (doc/org.bluez.GattCharacteristic)."""
        offset = options.get("offset")
        out = {
            "offset": Variant("q", int(offset.value) if offset is not None else 0),
            "mtu": Variant("q", self.mtu),
            "device": Variant("o", self.peripheral.device_path_of(self.central.address)),
            "link": Variant("s", "LE"),
        }
        if wtype is not None:
            out["type"] = Variant("s", wtype)
        return out

    def _export(self, path: str, iface: ServiceInterface) -> None:
        self.central.bus.export(path, iface)
        self._objects.append((path, iface))
