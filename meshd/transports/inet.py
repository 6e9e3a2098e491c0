"""The inet transport: TCP links (listeners + configured peers) and LAN discovery.

Every TCP connection runs the identity-bound Noise XX handshake
(``meshd.crypto.handshake``) and then carries mesh frames as sealed records
(``meshd.crypto.channel`` over ``meshd.transports.framing``). asyncio Protocols, not
streams: one ``data_received`` parses every record that arrived, and frames queued in one
loop iteration leave in one ``writelines`` (one syscall).

Duplicate links (both sides dialed each other, e.g. both saw the other's beacon) are
resolved after the handshake proves identities: of two links to one peer set up in
opposite directions, both ends keep the one initiated by the smaller node address; of
two in the same direction, the one with the smaller handshake hash (both ends agree on
it, whatever order the handshakes completed in).
The transport moves mesh frames only; it never forwards IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import structlog

from meshd.address import NodeAddress
from meshd.crypto.channel import DEFAULT_REKEY_EVERY, SecureChannel
from meshd.crypto.handshake import LinkHandshake
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import HandshakeError, WireError
from meshd.router.events import LinkId
from meshd.router.frames import MAX_FRAME_LEN
from meshd.router.types import LinkInfo, LinkKind
from meshd.transports.base import Link, LinkEvents, Transport, TransportState, TransportStatus
from meshd.transports.discovery import DialRequest, DiscoveryConfig, LanDiscovery
from meshd.transports.framing import RecordDecoder, RecordType, encode_record

DEFAULT_PORT = 4717
TRANSPORT_KIND = b"inet"
CLOSE_NORMAL, CLOSE_DUPLICATE, CLOSE_SELF = 0, 1, 2
_HANDSHAKE_MAX = 4096  # handshake records are < 300 bytes; refuse big ones early


@dataclass(frozen=True, slots=True)
class InetConfig:
    """Tunables; the defaults are the daemon's."""

    handshake_timeout: float = 10.0
    keepalive_interval: float = 10.0  # ping when nothing was received for this long
    dead_after: float = 30.0  # close when nothing was received for this long
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_queue_bytes: int = 1 << 20  # per link; newest frames dropped past it
    max_pending_handshakes: int = 64
    rekey_every: int = DEFAULT_REKEY_EVERY
    discovery_port: int | None = None  # UDP port for beacons; default: the TCP port
    discovery_interfaces: tuple[str, ...] | None = None  # None: every suitable interface
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    rescan_interval: float = 5.0


def _endpoint(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = str(addr[0]), addr[1]
        if ":" in host:
            if len(addr) >= 4 and addr[3] and "%" not in host:
                with contextlib.suppress(OSError):
                    host = f"{host}%{socket.if_indextoname(addr[3])}"
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    return str(addr)


class InetLink(asyncio.Protocol, Link):
    """One TCP connection: handshake first, then an encrypted link to one neighbour."""

    def __init__(
        self,
        owner: InetTransport,
        *,
        initiator: bool,
        expected: NodeAddress | None = None,
    ) -> None:
        self._owner = owner
        self.initiator = initiator
        self._hs: LinkHandshake | None = LinkHandshake(
            owner.identity,
            initiator=initiator,
            transport_kind=TRANSPORT_KIND,
            expected_peer=expected,
        )
        # One decoder bound for the whole connection: the initiator may send its first
        # frames in the same segment as handshake message 3. Handshake records are
        # checked against the much smaller _HANDSHAKE_MAX in _handshake_record.
        self._decoder = RecordDecoder()
        self._channel: SecureChannel | None = None
        self._peer: PublicIdentity | None = None
        self._tp: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._desc = "tcp ?"
        self.link_id: LinkId | None = None
        self.handshake_hash = b""
        self.closed = False
        self.close_reason: str | None = None
        self.authenticated: asyncio.Future[bool] = self._loop.create_future()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.last_rx = self._loop.time()
        self.last_ping = 0.0
        self.up_since = 0.0
        self.frames_dropped = 0

    # --- Link ---------------------------------------------------------------------
    @property
    def peer(self) -> PublicIdentity:
        if self._peer is None:
            raise HandshakeError("link not authenticated yet")
        return self._peer

    @property
    def info(self) -> LinkInfo:
        return LinkInfo(kind=LinkKind.INET, quality=1.0, mtu=MAX_FRAME_LEN)

    @property
    def description(self) -> str:
        return self._desc

    def send(self, frame: bytes) -> None:
        channel, tp = self._channel, self._tp
        if channel is None or tp is None or self.closed or len(frame) > MAX_FRAME_LEN:
            self.frames_dropped += 1
            return
        size = len(frame) + 20
        queued = tp.get_write_buffer_size() + self._pending_bytes
        if queued + size > self._owner.config.max_queue_bytes:
            self.frames_dropped += 1  # drop newest: the router's hop-by-hop ARQ resends
            return
        self._pending.extend(channel.seal(RecordType.DATA, frame))
        self._pending_bytes += size
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def close(self) -> None:
        self._close(CLOSE_NORMAL, "closed locally")

    # --- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        transport = cast(asyncio.Transport, transport)
        self._tp = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # latency: frames are small and interactive
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = transport.get_extra_info("peername")
        self._desc = f"tcp {_endpoint(peername)}"
        self._timer = self._loop.call_later(
            self._owner.config.handshake_timeout, self._handshake_timeout
        )
        self._owner._conn_opened(self)
        if self.initiator and self._hs is not None:
            transport.write(encode_record(RecordType.HANDSHAKE, self._hs.start()))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = self._loop.time()
        try:
            records = self._decoder.feed(data)
            for rtype, header, body in records:
                if self.closed:
                    return
                channel = self._channel
                if channel is None:
                    self._handshake_record(rtype, body)
                elif rtype == RecordType.DATA:
                    frame = channel.open(header, body)
                    if self.link_id is not None:
                        self._owner._frame(self.link_id, frame)
                else:
                    self._control_record(rtype, channel.open(header, body))
        except WireError as exc:  # HandshakeError is a WireError
            self._owner._log.info(
                "inet.link_refused" if self._channel is None else "inet.link_error",
                endpoint=self._desc, error=str(exc),
            )
            self._abort(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.authenticated.done():
            self.authenticated.set_result(False)
        self._owner._conn_closed(self)
        if not self.done.done():
            self.done.set_result(None)

    # --- internals ----------------------------------------------------------------
    def _handshake_record(self, rtype: int, body: bytes) -> None:
        hs = self._hs
        if rtype != RecordType.HANDSHAKE or hs is None:
            raise HandshakeError("expected a handshake record", field="record.type")
        if len(body) > _HANDSHAKE_MAX:
            raise HandshakeError("handshake record too long", field="record.length")
        reply = hs.receive(body)
        # Message 1 again (same ephemeral key) is a replay: do not answer it.
        first_message = not hs.complete and not self.initiator
        if first_message and not self._owner._fresh_ephemeral(hs.remote_ephemeral):
            raise HandshakeError("replayed handshake message", field="handshake.e")
        if reply:
            assert self._tp is not None
            self._tp.write(encode_record(RecordType.HANDSHAKE, reply))
        if not hs.complete:
            return
        result = hs.result()
        self._hs = None
        self._peer = result.peer
        self.handshake_hash = result.handshake_hash
        self._channel = SecureChannel(
            result.send, result.recv, rekey_every=self._owner.config.rekey_every
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.up_since = self._loop.time()
        self._owner._authenticated(self)
        if not self.authenticated.done():
            self.authenticated.set_result(not self.closed)

    def _control_record(self, rtype: int, body: bytes) -> None:
        if rtype == RecordType.PING:
            self._send_control(RecordType.PONG, body)
        elif rtype == RecordType.CLOSE:
            reason = body[0] if body else CLOSE_NORMAL
            self._shutdown(f"peer closed (reason {reason})")
        elif rtype != RecordType.PONG:
            raise WireError(f"unexpected record type {rtype} on a link", field="record.type")

    def ping(self) -> None:
        self.last_ping = self._loop.time()
        self._send_control(RecordType.PING, b"")

    def _send_control(self, rtype: int, body: bytes) -> None:
        if self._channel is None or self._tp is None or self.closed:
            return
        self._pending.extend(self._channel.seal(rtype, body))
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and self._tp is not None and not self._tp.is_closing():
            self._tp.writelines(self._pending)
        self._pending = []
        self._pending_bytes = 0

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._channel is None:
            self._owner._log.info("inet.handshake_timeout", endpoint=self._desc)
            self._abort("handshake timeout")

    def _close(self, reason_code: int, reason: str) -> None:
        """Orderly close: tell the peer why (if the channel is up), flush, close."""
        if self.closed:
            return
        self._send_control(RecordType.CLOSE, bytes([reason_code]))
        self._shutdown(reason)

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self._flush()
        self.closed = True
        self.close_reason = reason
        if self._tp is not None:
            self._tp.close()

    def _abort(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        if self._tp is not None:
            self._tp.abort()


class InetTransport(Transport):
    """TCP listeners, configured peers (redialed with backoff) and LAN discovery."""

    name = "inet"

    def __init__(
        self,
        identity: Identity,
        *,
        listen: Iterable[tuple[str, int]] | None = None,
        peers: Iterable[tuple[str, int]] = (),
        discovery: bool = True,
        port: int = DEFAULT_PORT,
        config: InetConfig | None = None,
        rng: random.Random | None = None,
        logger: Any = None,
    ) -> None:
        self.identity = identity
        self.config = config or InetConfig()
        self._listen = list(listen) if listen is not None else [("::", port)]
        self._peers = list(peers)
        self._discovery_enabled = discovery
        self._port = port
        self._rng = rng or random.Random()
        self._log = logger or structlog.get_logger("meshd.inet")
        self._events: LinkEvents | None = None
        self._servers: list[asyncio.Server] = []
        self._endpoints: list[str] = []
        self._problems: list[str] = []
        self._conns: set[InetLink] = set()
        self._links: dict[NodeAddress, InetLink] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen_ephemerals: OrderedDict[bytes, None] = OrderedDict()
        self._lan: LanDiscovery | None = None
        self._state = TransportState.STOPPED
        self.advertised_port = port

    # --- Transport ----------------------------------------------------------------
    async def start(self, events: LinkEvents) -> None:
        self._events = events
        self._state = TransportState.STARTING
        self._problems.clear()
        loop = asyncio.get_running_loop()
        for host, port in self._listen:
            try:
                server = await self._serve(loop, host, port)
            except OSError as exc:
                self._problems.append(f"listen {host}:{port}: {exc.strerror or exc}")
                self._log.warning("inet.listen_failed", host=host, port=port, error=str(exc))
                continue
            self._servers.append(server)
            for sock in server.sockets:
                self._endpoints.append(f"tcp {_endpoint(sock.getsockname())}")
        if self._servers:
            self.advertised_port = self._servers[0].sockets[0].getsockname()[1]
        for host, port in self._peers:
            self._spawn(self._dial_loop(host, port))
        self._spawn(self._keepalive_loop())
        if self._discovery_enabled:
            self._start_discovery()
        self._state = TransportState.RUNNING

    async def stop(self) -> None:
        self._state = TransportState.STOPPED
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._lan is not None:
            await self._lan.stop()
            self._lan = None
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            conn.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        self._endpoints.clear()
        # Give connection_lost a chance to run so link_down reaches the node.
        for _ in range(3):
            if not self._conns:
                break
            await asyncio.sleep(0.01)

    def status(self) -> TransportStatus:
        state, detail = self._state, "ok"
        if self._problems and state is TransportState.RUNNING:
            state, detail = TransportState.DEGRADED, "; ".join(self._problems[-3:])
        endpoints = list(self._endpoints)
        if self._lan is not None:
            endpoints += [f"discovery udp/{self._lan.port} on {i.name}"
                          for i in self._lan.interfaces]
        return TransportStatus(
            name=self.name, state=state, detail=detail,
            links=len(self._links), local_endpoints=tuple(endpoints),
        )

    # --- public helpers -------------------------------------------------------------
    def links(self) -> list[InetLink]:
        return list(self._links.values())

    def linked(self, address: NodeAddress) -> bool:
        return address in self._links

    async def dial(
        self, host: str, port: int, *, expected: NodeAddress | None = None
    ) -> InetLink | None:
        """Connect once; the link if the handshake succeeded and the link was kept."""
        conn = await self._connect(host, port, expected)
        if conn is None:
            return None
        ok = await conn.authenticated
        return conn if ok and conn.link_id is not None else None

    async def _connect(
        self, host: str, port: int, expected: NodeAddress | None
    ) -> InetLink | None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: InetLink(self, initiator=True, expected=expected), host, port
                ),
                self.config.handshake_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self._log.debug("inet.dial_failed", host=host, port=port, error=str(exc))
            return None
        return conn

    # --- listener / dialers -----------------------------------------------------------
    async def _serve(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> asyncio.Server:
        if host in ("::", ""):
            # asyncio always sets IPV6_V6ONLY; build a dual-stack socket ourselves.
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            except OSError:  # no IPv6 in this kernel
                return await loop.create_server(self._accept, "0.0.0.0", port, reuse_address=True)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
                sock.listen(128)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):  # IPv6 disabled
                    return await loop.create_server(
                        self._accept, "0.0.0.0", port, reuse_address=True
                    )
                raise
            return await loop.create_server(self._accept, sock=sock)
        return await loop.create_server(self._accept, host, port, reuse_address=True)

    def _accept(self) -> InetLink:
        return InetLink(self, initiator=False)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial_loop(self, host: str, port: int) -> None:
        """Keep a link to a configured peer: exponential backoff with jitter, capped."""
        delay = self.config.backoff_initial
        learned: NodeAddress | None = None
        loop = asyncio.get_running_loop()
        while True:
            if learned is not None and learned in self._links:
                # Already linked to that node (it dialed us, or discovery did): wait.
                await asyncio.sleep(self.config.backoff_initial)
                continue
            conn = await self._connect(host, port, None)
            if conn is not None and await conn.authenticated:
                learned = conn.peer.address
                started = loop.time()
                await conn.done
                if loop.time() - started > self.config.backoff_max:
                    delay = self.config.backoff_initial  # it was a good link: retry fast
                # else: a link that keeps dying young backs off like a failed dial
            elif conn is not None and conn._peer is not None:
                learned = conn._peer.address  # proven, but closed as duplicate or self
                if learned == self.identity.address:
                    self._log.warning("inet.peer_is_self", host=host, port=port)
                    return
                if learned in self._links:
                    continue
            await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
            delay = min(self.config.backoff_max, delay * 2)

    async def _keepalive_loop(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        tick = max(0.05, min(cfg.keepalive_interval, cfg.dead_after) / 4)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in list(self._links.values()):
                idle = now - conn.last_rx
                if idle > cfg.dead_after:
                    self._log.info("inet.link_dead", peer=conn.peer.address.short,
                                   endpoint=conn.description)
                    conn._abort("keepalive timeout")
                elif min(idle, now - conn.last_ping) >= cfg.keepalive_interval:
                    conn.ping()

    # --- discovery --------------------------------------------------------------------
    def _start_discovery(self) -> None:
        self._lan = LanDiscovery(
            own=self.identity.address,
            port=self.config.discovery_port or self._port,
            tcp_port=self.advertised_port if self._servers else None,
            dial=self._discovery_dial,
            linked=self._links,
            rng=self._rng,
            config=self.config.discovery,
            rescan_interval=self.config.rescan_interval,
            interfaces=self.config.discovery_interfaces,
            on_error=lambda msg: self._log.debug("inet.discovery_error", error=msg),
        )
        self._lan.start()
        if not self._lan.active:
            self._problems.append("discovery: no multicast socket could be opened")

    async def _discovery_dial(self, req: DialRequest) -> bool:
        self._log.debug("inet.discovery_dial", peer=req.address.short, host=req.host)
        conn = await self.dial(req.host, req.port, expected=req.address)
        return conn is not None or req.address in self._links

    # --- callbacks from InetLink ------------------------------------------------------
    def _conn_opened(self, conn: InetLink) -> None:
        pending = sum(1 for c in self._conns if c.link_id is None)
        self._conns.add(conn)
        if pending >= self.config.max_pending_handshakes:
            self._log.warning("inet.too_many_handshakes", endpoint=conn.description)
            conn._abort("too many pending handshakes")

    def _fresh_ephemeral(self, ephemeral: bytes | None) -> bool:
        """Refuse a handshake whose first message we have already answered (replay)."""
        if ephemeral is None:
            return True
        if ephemeral in self._seen_ephemerals:
            return False
        self._seen_ephemerals[ephemeral] = None
        if len(self._seen_ephemerals) > 4096:
            self._seen_ephemerals.popitem(last=False)
        return True

    def _authenticated(self, conn: InetLink) -> None:
        peer = conn.peer.address
        own = self.identity.address
        if peer == own:
            self._log.info("inet.self_dial", endpoint=conn.description)
            conn._close(CLOSE_SELF, "connected to ourselves")
            return
        old = self._links.get(peer)
        if old is not None:
            keep_new = self._preference(conn) < self._preference(old)
            if not keep_new:
                self._log.debug("inet.duplicate_link", peer=peer.short, kept=old.description)
                conn._close(CLOSE_DUPLICATE, "duplicate link")
                old.ping()  # if the kept link is stale, the peer's RST surfaces it now
                return
            self._log.debug("inet.duplicate_link", peer=peer.short, kept=conn.description)
            old._close(CLOSE_DUPLICATE, "replaced by a preferred link")
            self._drop_link(old)
        self._links[peer] = conn
        assert self._events is not None
        conn.link_id = self._events.link_up(conn)
        self._log.info("inet.link_up", peer=peer.short, endpoint=conn.description,
                       initiator=conn.initiator)

    def _preference(self, conn: InetLink) -> tuple[bytes, bytes]:
        """Sort key of duplicate links to one peer; both ends compute the same, keep the min.

        Opposite directions: the link initiated by the smaller address wins. Same direction
        (two dials raced, or the peer reconnected while we still hold the old link): the
        smaller handshake hash wins, which both ends know, unlike completion order. A stale
        loser is pinged when it is kept, so a peer that restarted RSTs it at once.
        """
        initiator = self.identity.address if conn.initiator else conn.peer.address
        return initiator.raw, conn.handshake_hash

    def _frame(self, link_id: LinkId, frame: bytes) -> None:
        assert self._events is not None
        self._events.frame_received(link_id, frame)

    def _drop_link(self, conn: InetLink) -> None:
        if conn.link_id is None or conn._peer is None:
            return
        link_id, conn.link_id = conn.link_id, None
        if self._links.get(conn._peer.address) is conn:
            del self._links[conn._peer.address]
        assert self._events is not None
        self._events.link_down(link_id)
        self._log.info("inet.link_down", peer=conn._peer.address.short,
                       endpoint=conn.description, reason=conn.close_reason)

    def _conn_closed(self, conn: InetLink) -> None:
        self._conns.discard(conn)
        self._drop_link(conn)
