"""The shared "air" of the virtual BlueZ: who hears whom, how well, and fault injection.

Sans-IO: a plain model that the world (``world.py``) queries and feeds. It never touches
D-Bus, a clock or a socket. Changes that the world must act on (a connection lost because
an adapter went off or two nodes moved apart) are returned as frozen events.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from meshd.errors import FailedPrecondition, InvalidArgument, NotFound

# ATT_MTU bounds: 23 is the LE default (Core 5.3 Vol 3 Part F 3.2.8), 517 the largest
# BlueZ negotiates (512-byte attribute + 5 bytes of ATT header).
MIN_MTU = 23
MAX_MTU = 517
# RSSI as BlueZ reports it: int16 dBm; real radios report about -127..+20.
MIN_RSSI = -127
MAX_RSSI = 20


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Radio conditions between two nodes in range (symmetric)."""

    rssi: int = -60
    mtu: int = MAX_MTU
    # Probability that one advertising report is not heard. The link layer retransmits
    # data PDUs, so GATT traffic is not lost; only connections can drop (fault injection).
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not MIN_RSSI <= self.rssi <= MAX_RSSI:
            raise InvalidArgument(
                f"must be within {MIN_RSSI}..{MAX_RSSI} dBm, got {self.rssi}", field="rssi"
            )
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise InvalidArgument(
                f"must be within {MIN_MTU}..{MAX_MTU}, got {self.mtu}", field="mtu"
            )
        if not 0.0 <= self.loss <= 1.0:
            raise InvalidArgument(f"must be within 0..1, got {self.loss}", field="loss")


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The LE connection central→peripheral ended without either side asking."""

    central: str
    peripheral: str
    reason: str


@dataclass(frozen=True, slots=True)
class PowerChanged:
    node: str
    powered: bool


AirEvent = ConnectionLost | PowerChanged
_Match = Callable[[str, str], bool]


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


class Air:
    """Which nodes are in range, with which RSSI/MTU/loss; adapter power; connections."""

    def __init__(self, *, seed: int = 0) -> None:
        self._nodes: dict[str, bool] = {}  # name -> powered
        self._links: dict[frozenset[str], LinkParams] = {}
        # One LE connection per pair of nodes, keyed (central, peripheral) by who initiated
        # it, with the MTU it runs at. Once up, either side may be GATT client of the other.
        self._connections: dict[tuple[str, str], int] = {}
        self._rng = random.Random(seed)

    # -- nodes and links -------------------------------------------------------------
    def add_node(self, name: str, *, powered: bool = True) -> None:
        if not name:
            raise InvalidArgument("must not be empty", field="name")
        if name in self._nodes:
            raise InvalidArgument(f"node {name!r} already exists", field="name")
        self._nodes[name] = powered

    def remove_node(self, name: str) -> list[AirEvent]:
        self._check(name)
        events = self._drop_where(lambda c, p: name in (c, p), "node removed")
        for pair in [p for p in self._links if name in p]:
            del self._links[pair]
        del self._nodes[name]
        return events

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def set_link(
        self, a: str, b: str, *, rssi: int = -60, mtu: int = MAX_MTU, loss: float = 0.0
    ) -> None:
        """Put a and b in range of each other (or update the conditions)."""
        self._check(a)
        self._check(b)
        if a == b:
            raise InvalidArgument("a node is always in range of itself", field="b")
        self._links[_pair(a, b)] = LinkParams(rssi=rssi, mtu=mtu, loss=loss)

    def update_link(self, a: str, b: str, **changes: int | float) -> None:
        """Change some conditions of an existing link (rssi=, mtu=, loss=)."""
        current = self.link(a, b)
        if current is None:
            raise NotFound(f"{a!r} and {b!r} are not in range", field="b")
        self._links[_pair(a, b)] = replace(current, **changes)  # type: ignore[arg-type]

    def cut_link(self, a: str, b: str) -> list[AirEvent]:
        """Move a and b out of range; a connection between them is lost."""
        self._links.pop(_pair(a, b), None)
        return self._drop_where(lambda c, p: _pair(c, p) == _pair(a, b), "out of range")

    def link(self, a: str, b: str) -> LinkParams | None:
        return self._links.get(_pair(a, b))

    def in_range(self, a: str, b: str) -> bool:
        return _pair(a, b) in self._links

    def neighbours(self, name: str) -> list[str]:
        self._check(name)
        return sorted(n for pair in self._links if name in pair for n in pair if n != name)

    def heard(self, scanner: str, advertiser: str) -> bool:
        """Whether one advertising report of advertiser reaches scanner (seeded loss)."""
        params = self.link(scanner, advertiser)
        if params is None or not (self.powered(scanner) and self.powered(advertiser)):
            return False
        return params.loss <= 0.0 or self._rng.random() >= params.loss

    # -- power -----------------------------------------------------------------------
    def powered(self, name: str) -> bool:
        self._check(name)
        return self._nodes[name]

    def set_powered(self, name: str, powered: bool) -> list[AirEvent]:
        self._check(name)
        if self._nodes[name] == powered:
            return []
        self._nodes[name] = powered
        events: list[AirEvent] = []
        if not powered:
            events = self._drop_where(lambda c, p: name in (c, p), "adapter powered off")
        events.append(PowerChanged(name, powered))
        return events

    # -- connections -----------------------------------------------------------------
    def connect(self, central: str, peripheral: str) -> LinkParams:
        """Open central→peripheral; returns the link conditions (MTU) it runs with."""
        self._check(central)
        self._check(peripheral)
        if self.connection_between(central, peripheral) is not None:
            raise FailedPrecondition(
                f"{central!r} and {peripheral!r} are already connected", field="peripheral"
            )
        if not self.powered(central):
            raise FailedPrecondition(f"adapter of {central!r} is off", field="central")
        if not self.powered(peripheral):
            raise FailedPrecondition(f"{peripheral!r} is off", field="peripheral")
        params = self.link(central, peripheral)
        if params is None:
            raise FailedPrecondition(
                f"{peripheral!r} is out of range of {central!r}", field="peripheral"
            )
        self._connections[(central, peripheral)] = params.mtu
        return params

    def disconnect(self, a: str, b: str) -> bool:
        """Either side asked to disconnect; True if there was a connection."""
        conn = self.connection_between(a, b)
        if conn is None:
            return False
        del self._connections[conn]
        return True

    def connection_between(self, a: str, b: str) -> tuple[str, str] | None:
        """(central, peripheral) of the connection between a and b, in either role."""
        for conn in ((a, b), (b, a)):
            if conn in self._connections:
                return conn
        return None

    def connection_mtu(self, a: str, b: str) -> int | None:
        conn = self.connection_between(a, b)
        return None if conn is None else self._connections[conn]

    def drop_connections_of(self, name: str, reason: str) -> list[AirEvent]:
        """Every connection of name ends (e.g. its bluetoothd restarted)."""
        self._check(name)
        return self._drop_where(lambda c, p: name in (c, p), reason)

    def drop_connection(self, a: str, b: str) -> list[AirEvent]:
        """Fault injection: the connection between a and b dies (supervision timeout)."""
        return self._drop_where(lambda c, p: _pair(c, p) == _pair(a, b), "connection dropped")

    def connected(self, central: str, peripheral: str) -> bool:
        return (central, peripheral) in self._connections

    def connections(self) -> list[tuple[str, str]]:
        return sorted(self._connections)

    # -- helpers ---------------------------------------------------------------------
    def _check(self, name: str) -> None:
        if name not in self._nodes:
            raise NotFound(f"no node {name!r} in the air", field="node")

    def _drop_where(self, match: _Match, reason: str) -> list[AirEvent]:
        lost = sorted(c for c in self._connections if match(*c))
        for conn in lost:
            del self._connections[conn]
        return [ConnectionLost(c, p, reason) for c, p in lost]
