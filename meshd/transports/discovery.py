"""Zero-config LAN discovery: UDP multicast beacons on every multicast-capable interface.

A beacon says only "a meshd node with this address listens on this TCP port here"; it is
trusted for nothing else. A beacon from a node we have no link to triggers a TCP dial to
the beacon's source address (with its interface scope for IPv6 link-local), and the
handshake then proves the identity (the dial expects the beaconed address).

* ``Beacon`` / ``encode_beacon`` / ``decode_beacon``: the 24-byte wire form.
* ``DiscoveryCore``: sans-IO policy (when to beacon, whom to dial, per-peer dial backoff,
  the tie-break deferral). Fed ``now``; never reads a clock.
* ``scan_interfaces`` and ``MulticastDiscovery``: the Linux socket adapter.
* ``LanDiscovery``: runs the core over the adapter on the event loop (used by inet).

Beacon layout (big-endian)::

    0  magic    4 bytes  b"MSHB"
    4  version  u8       = 1
    5  flags    u8       reserved, 0
    6  port     u16      TCP port of the node's listener
    8  address  16 bytes NodeAddress
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Collection, Container, Coroutine
from dataclasses import dataclass, field
from typing import Any

from meshd.address import ADDRESS_LEN, NodeAddress
from meshd.errors import WireError

BEACON_MAGIC = b"MSHB"
BEACON_VERSION = 1
BEACON_LEN = 24
_BEACON = struct.Struct(">4sBBH16s")
assert _BEACON.size == BEACON_LEN
# Link-local scope groups: ff02::/16 never leaves the link (RFC 4291 §2.7);
# 239.255.0.0/16 is the IPv4 organization-local scope (RFC 2365), sent with TTL 1.
IPV6_GROUP = "ff02::6d65:7368"  # "mesh"
IPV4_GROUP = "239.255.77.17"
DEFAULT_DISCOVERY_PORT = 4717


@dataclass(frozen=True, slots=True)
class Beacon:
    address: NodeAddress
    tcp_port: int
    version: int = BEACON_VERSION


def encode_beacon(beacon: Beacon) -> bytes:
    return _BEACON.pack(BEACON_MAGIC, beacon.version, 0, beacon.tcp_port, beacon.address.raw)


def decode_beacon(data: bytes) -> Beacon:
    """Parse a beacon; later versions may append fields, which are ignored."""
    if len(data) < BEACON_LEN:
        raise WireError(f"beacon is {len(data)} bytes, need {BEACON_LEN}", field="beacon")
    magic, version, _flags, port, raw = _BEACON.unpack_from(data)
    if magic != BEACON_MAGIC:
        raise WireError("not a meshd beacon", field="beacon.magic")
    if version < 1:
        raise WireError(f"bad beacon version {version}", field="beacon.version")
    if port == 0:
        raise WireError("beacon advertises port 0", field="beacon.port")
    assert len(raw) == ADDRESS_LEN
    return Beacon(address=NodeAddress(raw), tcp_port=port, version=version)


@dataclass(frozen=True, slots=True)
class DialRequest:
    """Dial ``host``:``port`` and expect the handshake to prove ``address``."""

    address: NodeAddress
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    fast_interval: float = 2.0  # first beacons after start / an interface change
    fast_count: int = 5
    slow_interval: float = 10.0
    # The larger address waits this long before dialing, so that usually only the smaller
    # one dials and the tie-break never has to close a connection.
    defer: float = 3.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    forget_after: float = 300.0
    # Beacons are unauthenticated: bound what a flood of fake ones can make us do.
    max_peers: int = 256
    max_concurrent_dials: int = 8


@dataclass(slots=True)
class _Peer:
    host: str
    port: int
    last_seen: float
    next_dial_at: float
    failures: int = 0
    dialing: bool = False


@dataclass(slots=True)
class DiscoveryCore:
    """Beacon schedule and dial policy for one node. Sans-IO."""

    own: NodeAddress
    rng: random.Random
    now: float
    config: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    _peers: dict[NodeAddress, _Peer] = field(default_factory=dict)
    _fast_left: int = 0
    _next_beacon: float = 0.0

    def __post_init__(self) -> None:
        self._fast_left = self.config.fast_count
        self._next_beacon = self.now

    @property
    def next_beacon_at(self) -> float:
        return self._next_beacon

    def beacon_sent(self, *, now: float) -> None:
        if self._fast_left > 0:
            self._fast_left -= 1
            interval = self.config.fast_interval
        else:
            interval = self.config.slow_interval
        # +-10 % jitter so that nodes started together do not beacon in lockstep.
        self._next_beacon = now + interval * self.rng.uniform(0.9, 1.1)

    def interfaces_changed(self, *, now: float) -> None:
        """A new interface came up: beacon now and fast for a while."""
        self._fast_left = self.config.fast_count
        self._next_beacon = now

    def on_beacon(
        self, beacon: Beacon, host: str, *, now: float, linked: bool
    ) -> DialRequest | None:
        if beacon.address == self.own:
            return None
        peer = self._peers.get(beacon.address)
        if peer is None:
            if len(self._peers) >= self.config.max_peers:
                return None
            first_dial = now if self.own < beacon.address else now + self.config.defer
            peer = _Peer(host=host, port=beacon.tcp_port, last_seen=now, next_dial_at=first_dial)
            self._peers[beacon.address] = peer
        peer.last_seen = now
        if not peer.dialing:
            peer.host, peer.port = host, beacon.tcp_port
        if linked:
            peer.failures = 0
            return None
        return self._maybe_dial(beacon.address, peer, now)

    def dial_finished(self, address: NodeAddress, *, ok: bool, now: float) -> None:
        peer = self._peers.get(address)
        if peer is None:
            return
        peer.dialing = False
        if ok:
            peer.failures = 0
            peer.next_dial_at = now if self.own < address else now + self.config.defer
            return
        peer.failures += 1
        delay = min(
            self.config.backoff_max, self.config.backoff_initial * 2 ** (peer.failures - 1)
        )
        peer.next_dial_at = now + delay * self.rng.uniform(0.8, 1.2)

    def poll(self, *, now: float, linked: Container[NodeAddress]) -> list[DialRequest]:
        """Dials whose deferral or backoff ran out; forgets peers silent for too long."""
        out: list[DialRequest] = []
        for address, peer in list(self._peers.items()):
            if now - peer.last_seen > self.config.forget_after and not peer.dialing:
                del self._peers[address]
                continue
            # Only peers still beaconing recently (two slow intervals) are worth a dial.
            if address in linked or now - peer.last_seen > 2 * self.config.slow_interval:
                continue
            req = self._maybe_dial(address, peer, now)
            if req is not None:
                out.append(req)
        return out

    def next_deadline(self) -> float:
        pending = [p.next_dial_at for p in self._peers.values() if not p.dialing]
        return min([self._next_beacon, *pending])

    def _maybe_dial(self, address: NodeAddress, peer: _Peer, now: float) -> DialRequest | None:
        if peer.dialing or now < peer.next_dial_at:
            return None
        if sum(1 for p in self._peers.values() if p.dialing) >= self.config.max_concurrent_dials:
            return None  # poll() picks it up once a dial finishes
        peer.dialing = True
        return DialRequest(address=address, host=peer.host, port=peer.port)


# --- Linux interface enumeration ----------------------------------------------------

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000
_IFA_F_TENTATIVE = 0x40  # still in duplicate address detection: cannot send from it yet


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    index: int
    ipv4: str | None
    ipv6_link_local: bool


def _ipv6_link_local_ifaces() -> set[str]:
    names: set[str] = set()
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 6:
                    continue
                addr, _idx, _plen, scope, flags, name = parts
                link_scope = addr.startswith("fe80") and int(scope, 16) == 0x20
                if link_scope and not int(flags, 16) & _IFA_F_TENTATIVE:
                    names.add(name)
    except OSError:
        pass
    return names


def scan_interfaces(only: Collection[str] | None = None) -> list[Interface]:
    """Up, multicast-capable, non-loopback interfaces (optionally only those named)."""
    v6 = _ipv6_link_local_ifaces()
    out: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for index, name in socket.if_nameindex():
            if only is not None and name not in only:
                continue
            ifreq = struct.pack("16s16x", name.encode()[:15])
            try:
                res = fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, ifreq)
            except OSError:
                continue
            flags = struct.unpack_from("H", res, 16)[0]
            if not flags & _IFF_UP or flags & _IFF_LOOPBACK or not flags & _IFF_MULTICAST:
                continue
            ipv4: str | None
            try:
                res = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, ifreq)
                ipv4 = socket.inet_ntoa(res[20:24])
            except OSError:
                ipv4 = None
            if ipv4 is None and name not in v6:
                continue
            out.append(Interface(name, index, ipv4, name in v6))
    return out


# --- socket adapter -----------------------------------------------------------------

BeaconHandler = Callable[[Beacon, str], None]  # (beacon, dial host incl. "%ifname")


class MulticastDiscovery:
    """Sends and receives beacons on every interface; joins groups as interfaces appear."""

    def __init__(
        self,
        *,
        port: int,
        on_beacon: BeaconHandler,
        interfaces: Collection[str] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._port = port
        self._on_beacon = on_beacon
        self._only = interfaces
        self._on_error = on_error or (lambda msg: None)
        self._v6: socket.socket | None = None
        self._v4: socket.socket | None = None
        self._ifaces: dict[int, Interface] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        return self._v6 is not None or self._v4 is not None

    @property
    def interfaces(self) -> list[Interface]:
        return list(self._ifaces.values())

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            v6.bind(("::", self._port))
            v6.setblocking(False)
            self._v6 = v6
            self._loop.add_reader(v6.fileno(), self._readable, v6)
        except OSError as exc:
            self._on_error(f"IPv6 discovery socket: {exc}")
        try:
            v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            v4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            v4.bind(("0.0.0.0", self._port))
            v4.setblocking(False)
            self._v4 = v4
            self._loop.add_reader(v4.fileno(), self._readable, v4)
        except OSError as exc:
            self._on_error(f"IPv4 discovery socket: {exc}")

    def close(self) -> None:
        for sock in (self._v6, self._v4):
            if sock is not None:
                if self._loop is not None:
                    self._loop.remove_reader(sock.fileno())
                sock.close()
        self._v6 = self._v4 = None
        self._ifaces.clear()

    def rescan(self) -> bool:
        """Join the groups on new interfaces; True when an interface appeared."""
        current = {i.index: i for i in scan_interfaces(self._only)}
        added = False
        for index, iface in current.items():
            old = self._ifaces.get(index)
            if old == iface:
                continue
            added = True
            if self._v6 is not None and iface.ipv6_link_local:
                mreq6 = socket.inet_pton(socket.AF_INET6, IPV6_GROUP) + struct.pack("@I", index)
                with contextlib.suppress(OSError):  # EADDRINUSE: already a member
                    self._v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
            if self._v4 is not None and iface.ipv4 is not None:
                mreqn = struct.pack(
                    "@4s4si", socket.inet_aton(IPV4_GROUP), socket.inet_aton(iface.ipv4), index
                )
                with contextlib.suppress(OSError):
                    self._v4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        self._ifaces = current
        return added

    def send(self, payload: bytes) -> int:
        """Send one beacon per interface and family; returns how many went out."""
        sent = 0
        for iface in self._ifaces.values():
            if self._v6 is not None and iface.ipv6_link_local:
                try:
                    self._v6.setsockopt(
                        socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, iface.index
                    )
                    self._v6.sendto(payload, (IPV6_GROUP, self._port, 0, iface.index))
                    sent += 1
                except OSError as exc:
                    self._on_error(f"beacon on {iface.name} (IPv6): {exc}")
            if self._v4 is not None and iface.ipv4 is not None:
                try:
                    self._v4.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface.ipv4)
                    )
                    self._v4.sendto(payload, (IPV4_GROUP, self._port))
                    sent += 1
                except OSError as exc:
                    self._on_error(f"beacon on {iface.name} (IPv4): {exc}")
        return sent

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):  # bounded batch per wakeup
            try:
                data, src = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._on_error(f"discovery receive: {exc}")
                return
            try:
                beacon = decode_beacon(data)
            except WireError:
                continue  # not ours or garbage: beacons are advisory, ignore quietly
            host = src[0]
            if sock.family == socket.AF_INET6 and len(src) >= 4 and src[3]:
                with contextlib.suppress(OSError):
                    host = f"{host}%{socket.if_indextoname(src[3])}"
            self._on_beacon(beacon, host)


DialFn = Callable[[DialRequest], Awaitable[bool]]


class LanDiscovery:
    """Drives ``DiscoveryCore`` over ``MulticastDiscovery`` on the event loop.

    ``dial`` connects and returns True when a link to the address exists afterwards;
    ``linked`` is the live set of addresses we have links to. ``tcp_port`` is None when
    there is no listener: then we still hear beacons and dial, but advertise nothing.
    """

    def __init__(
        self,
        *,
        own: NodeAddress,
        port: int,
        tcp_port: int | None,
        dial: DialFn,
        linked: Container[NodeAddress],
        rng: random.Random,
        config: DiscoveryConfig,
        rescan_interval: float,
        interfaces: Collection[str] | None,
        on_error: Callable[[str], None],
    ) -> None:
        self.port = port
        self._own = own
        self._tcp_port = tcp_port
        self._dial = dial
        self._linked = linked
        self._rng = rng
        self._config = config
        self._rescan_interval = rescan_interval
        self._mcast = MulticastDiscovery(
            port=port, on_beacon=self._on_beacon, interfaces=interfaces, on_error=on_error
        )
        self._core: DiscoveryCore | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        return self._mcast.active

    @property
    def interfaces(self) -> list[Interface]:
        return self._mcast.interfaces

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._core = DiscoveryCore(own=self._own, rng=self._rng, now=loop.time(),
                                   config=self._config)
        self._mcast.open()
        self._spawn(self._run())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._mcast.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        core = self._core
        assert core is not None
        loop = asyncio.get_running_loop()
        beacon = None
        if self._tcp_port is not None:
            beacon = encode_beacon(Beacon(self._own, self._tcp_port))
        next_scan = 0.0
        while True:
            now = loop.time()
            if now >= next_scan:  # interfaces come and go (USB, WiFi, veth)
                next_scan = now + self._rescan_interval
                if self._mcast.rescan():
                    core.interfaces_changed(now=now)
            if now >= core.next_beacon_at:
                if beacon is not None:
                    self._mcast.send(beacon)
                core.beacon_sent(now=now)
            for req in core.poll(now=now, linked=self._linked):
                self._spawn(self._dial_one(req))
            deadline = min(core.next_deadline(), next_scan)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, deadline - loop.time()))

    def _on_beacon(self, beacon: Beacon, host: str) -> None:
        if self._core is None:
            return
        now = asyncio.get_running_loop().time()
        linked = beacon.address in self._linked
        req = self._core.on_beacon(beacon, host, now=now, linked=linked)
        if req is not None:
            self._spawn(self._dial_one(req))
        self._wake.set()  # a deferred dial may now be due

    async def _dial_one(self, req: DialRequest) -> None:
        ok = False
        try:
            ok = await self._dial(req)
        finally:
            if self._core is not None:
                self._core.dial_finished(
                    req.address, ok=ok, now=asyncio.get_running_loop().time()
                )
            self._wake.set()
