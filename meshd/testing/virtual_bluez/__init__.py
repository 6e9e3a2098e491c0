"""A virtual BlueZ on private D-Bus buses, for running bleak and bless without radios.

    async with World() as world:
        p = await world.add_node("p")
        c = await world.add_node("c")
        world.set_link("p", "c", rssi=-55, mtu=185)
        # point a process (or, in-process, one client) at c.bus_address as its system bus

See docs/virtual-bluez.md.
"""

from __future__ import annotations

from .air import Air, ConnectionLost, LinkParams, PowerChanged
from .bus import PrivateBus, dbus_daemon_path
from .node import VirtualNode
from .world import World

__all__ = [
    "Air",
    "ConnectionLost",
    "LinkParams",
    "PowerChanged",
    "PrivateBus",
    "VirtualNode",
    "World",
    "dbus_daemon_path",
]
