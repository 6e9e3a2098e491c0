"""Two real InetTransports over loopback TCP: handshake, frames, reconnect, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meshd.crypto.channel import SecureChannel
from meshd.crypto.handshake import LinkHandshake, NoiseXX, auth_signed_data, prologue_for
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.router.events import LinkId
from meshd.router.frames import MAX_FRAME_LEN
from meshd.transports.base import Link, TransportState
from meshd.transports.framing import RecordDecoder, RecordType, encode_record
from meshd.transports.inet import InetConfig, InetTransport

pytestmark = pytest.mark.timeout(60)

FAST = InetConfig(
    handshake_timeout=1.0, keepalive_interval=0.2, dead_after=0.6,
    backoff_initial=0.05, backoff_max=0.3,
)


@dataclass
class Recorder:
    """The LinkEvents sink: records what the transport reported."""

    next_id: int = 1
    links: dict[LinkId, Link] = field(default_factory=dict)
    peers: dict[LinkId, PublicIdentity] = field(default_factory=dict)
    frames: list[tuple[LinkId, bytes]] = field(default_factory=list)
    downs: list[LinkId] = field(default_factory=list)
    ups: int = 0

    def link_up(self, link: Link) -> LinkId:
        link_id = self.next_id
        self.next_id += 1
        self.links[link_id] = link
        self.peers[link_id] = link.peer
        self.ups += 1
        return link_id

    def frame_received(self, link_id: LinkId, frame: bytes) -> None:
        assert link_id in self.links, "frame on a link that is not up"
        self.frames.append((link_id, frame))

    def link_down(self, link_id: LinkId) -> None:
        assert link_id in self.links, "link_down for an unknown link"
        del self.links[link_id]
        self.downs.append(link_id)

    def only_link(self) -> Link:
        assert len(self.links) == 1, self.links
        return next(iter(self.links.values()))


async def until(pred: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 64)


async def pair(host: str, ia: Identity, ib: Identity, cfg: InetConfig = FAST) -> tuple[
    InetTransport, Recorder, InetTransport, Recorder
]:
    ra, rb = Recorder(), Recorder()
    a = InetTransport(ia, listen=[(host, 0)], discovery=False, config=cfg)
    await a.start(ra)
    b = InetTransport(ib, listen=[], peers=[(host, a.advertised_port)], discovery=False,
                      config=cfg)
    await b.start(rb)
    await until(lambda: len(ra.links) == 1 and len(rb.links) == 1)
    return a, ra, b, rb


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_two_transports_exchange_frames(host: str) -> None:
    ia, ib = ident(1), ident(2)
    a, ra, b, rb = await pair(host, ia, ib)
    try:
        assert ra.only_link().peer == ib.public and rb.only_link().peer == ia.public
        assert rb.only_link().info.mtu == MAX_FRAME_LEN
        assert rb.only_link().description.startswith("tcp ")
        frames = [bytes([i % 256]) * (i * 37 % 3000) for i in range(500)]
        frames.append(b"\xaa" * MAX_FRAME_LEN)
        for f in frames:
            rb.only_link().send(f)
        ra.only_link().send(b"reply")
        await until(lambda: len(ra.frames) == len(frames) and len(rb.frames) == 1)
        assert [f for _, f in ra.frames] == frames  # in order, intact
        assert rb.frames[0][1] == b"reply"
        st = a.status()
        assert st.state is TransportState.RUNNING and st.links == 1
        assert st.local_endpoints and st.local_endpoints[0].startswith("tcp ")
    finally:
        await b.stop()
        await a.stop()
    assert not ra.links and not rb.links  # every link_up got its link_down


async def test_default_listener_is_dual_stack() -> None:
    ra = Recorder()
    a = InetTransport(ident(1), listen=[("::", 0)], discovery=False, config=FAST)
    await a.start(ra)
    try:
        port = a.advertised_port

        async def dial_from(host: str) -> None:
            b = InetTransport(ident(2), listen=[], discovery=False, config=FAST)
            rb = Recorder()
            await b.start(rb)
            assert await b.dial(host, port) is not None
            await until(lambda: len(rb.links) == 1)
            await b.stop()
            await until(lambda: not ra.links)

        await dial_from("127.0.0.1")  # IPv4-mapped on the one [::] socket
        await dial_from("::1")
    finally:
        await a.stop()


async def test_reconnects_after_listener_restarts() -> None:
    ia, ib = ident(1), ident(2)
    a, ra, b, rb = await pair("127.0.0.1", ia, ib)
    port = a.advertised_port
    try:
        await a.stop()
        await until(lambda: not rb.links)
        await asyncio.sleep(0.3)  # a few failed dials: the backoff grows
        a = InetTransport(ia, listen=[("127.0.0.1", port)], discovery=False, config=FAST)
        ra = Recorder()
        await a.start(ra)
        await until(lambda: len(rb.links) == 1 and len(ra.links) == 1)
        rb.only_link().send(b"after restart")
        await until(lambda: len(ra.frames) == 1)
        assert ra.frames[0][1] == b"after restart"
        assert rb.ups == 2 and len(rb.downs) == 1
    finally:
        await b.stop()
        await a.stop()


class RawPeer:
    """A hand-driven TCP client speaking the record layer (to misbehave on purpose)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = RecordDecoder()
        self.queue: list[tuple[int, bytes, bytes]] = []

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, rtype: int, body: bytes) -> None:
        self.writer.write(encode_record(rtype, body))

    async def record(self, within: float = 2.0) -> tuple[int, bytes, bytes] | None:
        """Next record, or None when the other side closed the connection."""
        while not self.queue:
            data = await asyncio.wait_for(self.reader.read(65536), within)
            if not data:
                return None
            self.queue += self.decoder.feed(data)
        return self.queue.pop(0)

    async def closed_by_peer(self, within: float = 2.0) -> bool:
        with contextlib.suppress(ConnectionError):
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), within)
                if not data:
                    return True
        return True

    def close(self) -> None:
        self.writer.close()


async def test_forged_identity_is_refused() -> None:
    ra = Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    await a.start(ra)
    mallory, victim = ident(7), ident(8)
    try:
        raw = await RawPeer.connect(a.advertised_port)
        noise = NoiseXX(initiator=True, static=mallory.exchange_private,
                        prologue=prologue_for(b"inet"))
        raw.send(RecordType.HANDSHAKE, noise.write_message(b""))
        rec = await raw.record()
        assert rec is not None and rec[0] == RecordType.HANDSHAKE
        noise.read_message(rec[2])

        def claim_victim(h: bytes) -> bytes:
            sig = mallory.sign(auth_signed_data(b"I", mallory.public.exchange_key, h))
            return b"\x01" + victim.public.signing_key + sig

        raw.send(RecordType.HANDSHAKE, noise.write_message(claim_victim))
        assert await raw.closed_by_peer()
        raw.close()
        assert ra.ups == 0
    finally:
        await a.stop()


async def test_dial_expecting_another_identity_is_refused() -> None:
    ra, rb = Recorder(), Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    b = InetTransport(ident(2), listen=[], discovery=False, config=FAST)
    await a.start(ra)
    await b.start(rb)
    try:
        assert await b.dial("127.0.0.1", a.advertised_port, expected=ident(3).address) is None
        assert rb.ups == 0
        link = await b.dial("127.0.0.1", a.advertised_port, expected=ident(1).address)
        assert link is not None and link.peer.address == ident(1).address
    finally:
        await b.stop()
        await a.stop()


async def test_replayed_first_message_gets_no_answer() -> None:
    ra = Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    await a.start(ra)
    try:
        hs = LinkHandshake(ident(2), initiator=True, transport_kind=b"inet")
        msg1 = hs.start()
        first = await RawPeer.connect(a.advertised_port)
        first.send(RecordType.HANDSHAKE, msg1)
        rec = await first.record()
        assert rec is not None and rec[0] == RecordType.HANDSHAKE
        replay = await RawPeer.connect(a.advertised_port)
        replay.send(RecordType.HANDSHAKE, msg1)
        assert await replay.record() is None  # closed without a message 2
        # The original handshake still completes.
        first.send(RecordType.HANDSHAKE, hs.receive(rec[2]))
        await until(lambda: ra.ups == 1)
        first.close()
        replay.close()
    finally:
        await a.stop()


async def test_garbage_peer_is_disconnected_without_harming_others() -> None:
    a, ra, b, rb = await pair("127.0.0.1", ident(1), ident(2))
    try:
        junk = await RawPeer.connect(a.advertised_port)
        junk.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await junk.closed_by_peer()
        junk.close()
        # Garbage after a valid record header, and an oversized record header.
        junk2 = await RawPeer.connect(a.advertised_port)
        junk2.writer.write(encode_record(RecordType.HANDSHAKE, b"\x00" * 32)[:4] + b"\xff" * 40)
        junk2.writer.write(b"\x02\xff\xff\xff")
        assert await junk2.closed_by_peer()
        junk2.close()
        # A silent peer is dropped at the handshake timeout.
        silent = await RawPeer.connect(a.advertised_port)
        assert await silent.closed_by_peer(within=3.0)
        silent.close()
        rb.only_link().send(b"still fine")
        await until(lambda: len(ra.frames) == 1)
        assert ra.frames[0][1] == b"still fine" and ra.ups == 1 and not ra.downs
    finally:
        await b.stop()
        await a.stop()


async def raw_handshake(port: int, me: Identity) -> tuple[RawPeer, SecureChannel]:
    raw = await RawPeer.connect(port)
    hs = LinkHandshake(me, initiator=True, transport_kind=b"inet")
    raw.send(RecordType.HANDSHAKE, hs.start())
    rec = await raw.record()
    assert rec is not None
    raw.send(RecordType.HANDSHAKE, hs.receive(rec[2]))
    res = hs.result()
    return raw, SecureChannel(res.send, res.recv)


async def test_keepalive_pings_and_a_silent_peer_is_declared_dead() -> None:
    ra = Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    await a.start(ra)
    try:
        raw, chan = await raw_handshake(a.advertised_port, ident(2))
        await until(lambda: ra.ups == 1)
        rec = await raw.record()  # idle: the transport pings inside the channel
        assert rec is not None and rec[0] == RecordType.PING
        chan.open(rec[1], rec[2])
        # We never answer: after dead_after the link goes down.
        await until(lambda: len(ra.downs) == 1, within=3.0)
        raw.close()
    finally:
        await a.stop()


async def test_send_queue_is_bounded_newest_dropped() -> None:
    cfg = InetConfig(max_queue_bytes=256 * 1024, keepalive_interval=60, dead_after=120)
    ra = Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=cfg)
    await a.start(ra)
    try:
        raw, _ = await raw_handshake(a.advertised_port, ident(2))
        await until(lambda: ra.ups == 1)
        link = ra.only_link()
        sock = raw.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(20):  # the raw peer never reads: ~13 MB offered
            for _ in range(10):
                link.send(b"\x00" * MAX_FRAME_LEN)
            await asyncio.sleep(0.01)
        assert getattr(link, "frames_dropped", 0) > 0
        tp = getattr(link, "_tp", None)
        assert tp is not None and tp.get_write_buffer_size() <= 256 * 1024
        raw.close()
    finally:
        await a.stop()


@pytest.mark.parametrize("seeds", [(1, 2), (2, 1)])
async def test_crossed_dials_leave_one_link_initiated_by_smaller_address(
    seeds: tuple[int, int],
) -> None:
    ia, ib = ident(seeds[0]), ident(seeds[1])
    ra, rb = Recorder(), Recorder()
    a = InetTransport(ia, listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    await a.start(ra)
    b = InetTransport(ib, listen=[("127.0.0.1", 0)], peers=[("127.0.0.1", a.advertised_port)],
                      discovery=False, config=FAST)
    await b.start(rb)
    try:
        link = await a.dial("127.0.0.1", b.advertised_port)
        await asyncio.sleep(0.5)
        assert len(ra.links) == 1 and len(rb.links) == 1
        smaller = min(ia.address, ib.address)
        kept_a = ra.only_link()
        initiated_by_a = getattr(kept_a, "initiator", None)
        assert (ia.address if initiated_by_a else ib.address) == smaller
        # dial() may return the link that the tie-break closes a moment later.
        assert link is kept_a or (link is not None and link.closed)
        assert getattr(kept_a, "handshake_hash", None) == getattr(
            rb.only_link(), "handshake_hash", None
        )  # the same TCP connection at both ends
        # Stable: no churn once settled.
        ups = (ra.ups, rb.ups)
        await asyncio.sleep(0.5)
        assert (ra.ups, rb.ups) == ups
        rb.only_link().send(b"one link")
        await until(lambda: len(ra.frames) == 1)
    finally:
        await b.stop()
        await a.stop()


async def test_listener_failure_is_degraded_with_detail() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        t = InetTransport(ident(1), listen=[("127.0.0.1", busy.getsockname()[1])],
                          discovery=False, config=FAST)
        await t.start(Recorder())
        st = t.status()
        assert st.state is TransportState.DEGRADED and "listen" in st.detail
        await t.stop()
        assert t.status().state is TransportState.STOPPED
    finally:
        busy.close()


async def test_self_dial_is_refused() -> None:
    ra = Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    await a.start(ra)
    try:
        assert await a.dial("127.0.0.1", a.advertised_port) is None
        await asyncio.sleep(0.1)
        assert ra.ups == 0
    finally:
        await a.stop()


async def test_a_big_frame_in_the_same_segment_as_message_3_is_delivered() -> None:
    ra = Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    await a.start(ra)
    try:
        raw = await RawPeer.connect(a.advertised_port)
        hs = LinkHandshake(ident(2), initiator=True, transport_kind=b"inet")
        raw.send(RecordType.HANDSHAKE, hs.start())
        rec = await raw.record()
        assert rec is not None
        msg3 = hs.receive(rec[2])
        res = hs.result()
        header, ct = SecureChannel(res.send, res.recv).seal(RecordType.DATA, b"\x07" * 60000)
        raw.writer.write(encode_record(RecordType.HANDSHAKE, msg3) + header + ct)
        await until(lambda: len(ra.frames) == 1)
        assert ra.frames[0][1] == b"\x07" * 60000
        raw.close()
    finally:
        await a.stop()


async def test_idle_link_stays_up_on_keepalives_and_uses_nodelay() -> None:
    a, ra, b, rb = await pair("127.0.0.1", ident(1), ident(2))
    try:
        link = rb.only_link()
        tp = getattr(link, "_tp", None)
        assert tp is not None
        assert tp.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await asyncio.sleep(1.5)  # 2.5 x dead_after with no frames: pings/pongs keep it up
        assert ra.ups == rb.ups == 1 and not ra.downs and not rb.downs
    finally:
        await b.stop()
        await a.stop()


async def test_links_rekey_and_keep_working() -> None:
    cfg = InetConfig(rekey_every=7, keepalive_interval=60, dead_after=120)
    a, ra, b, rb = await pair("127.0.0.1", ident(1), ident(2), cfg)
    try:
        for i in range(100):
            rb.only_link().send(b"%d" % i)
            ra.only_link().send(b"%d" % i)
        await until(lambda: len(ra.frames) == 100 and len(rb.frames) == 100)
        assert [f for _, f in ra.frames] == [b"%d" % i for i in range(100)]
    finally:
        await b.stop()
        await a.stop()


async def test_dial_to_a_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the handshake
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    b = InetTransport(ident(2), listen=[], discovery=False,
                      config=InetConfig(handshake_timeout=0.3))
    await b.start(Recorder())
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await b.dial("127.0.0.1", port) is None
        assert 0.25 <= loop.time() - t0 < 2.0
    finally:
        await b.stop()
        server.close()


async def test_racing_dials_in_one_direction_settle_on_the_same_link_at_both_ends() -> None:
    ra, rb = Recorder(), Recorder()
    a = InetTransport(ident(1), listen=[("127.0.0.1", 0)], discovery=False, config=FAST)
    b = InetTransport(ident(2), listen=[], discovery=False, config=FAST)
    await a.start(ra)
    await b.start(rb)
    try:
        for _ in range(3):
            await asyncio.gather(*(b.dial("127.0.0.1", a.advertised_port) for _ in range(4)))
            await asyncio.sleep(0.3)
            assert len(ra.links) == 1 and len(rb.links) == 1
            hash_a = getattr(ra.only_link(), "handshake_hash", None)
            assert hash_a and hash_a == getattr(rb.only_link(), "handshake_hash", None)
        rb.only_link().send(b"x")
        await until(lambda: len(ra.frames) == 1)
    finally:
        await b.stop()
        await a.stop()
