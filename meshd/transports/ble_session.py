"""One BLE link as a sans-IO state machine: pipe PDUs in, PDUs and link events out.

GATT gives a central two pipes to a peripheral: writes (with response, so the central
never outruns the peripheral) and notifications. bless (0.3.0) does not tell its app which
central wrote, and a notification reaches *every* subscribed central; so each PDU starts
with a session byte that the central chose in its OPEN::

    0  hdr   u8   bit 7 CONTROL, bits 0-6 session id (1..127)
    data PDU:     hdr (CONTROL clear) + one fragment (``ble_fragment``)
    control PDU:  hdr (CONTROL set) + type u8 + body
        OPEN   0x01  central -> peripheral: version u8, ATT MTU u16, window u8
        CREDIT 0x02  central -> peripheral: u16 more data PDUs it may notify
        CLOSE  0x03  either way: reason u8 (the peripheral refuses an OPEN with it too)

Notifications are flow-controlled by credits: the peripheral may have ``window`` data
PDUs unacknowledged; the central grants half a window back each time it has received
half a window. Over the pipe runs the inet transport's link protocol unchanged: records
(``framing``) of the identity-bound Noise XX handshake (``transport_kind`` b"ble", the
central initiates), then AEAD-sealed records (``crypto.channel``), each record fragmented
into PDUs. A lost or reordered PDU breaks the fragment sequence or the AEAD nonce, and the
link closes: GATT is reliable and ordered, so that only happens under attack or bugs.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from meshd.crypto.channel import SecureChannel
from meshd.crypto.handshake import LinkHandshake
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import FrameDecodeError, HandshakeError, WireError
from meshd.router.frames import MAX_FRAME_LEN
from meshd.transports.ble_fragment import Fragmenter, Reassembler
from meshd.transports.framing import (
    HEADER_LEN,
    MAX_RECORD_BODY,
    RecordType,
    encode_record,
)

TRANSPORT_KIND = b"ble"
CONTROL = 0x80
OPEN, CREDIT, CLOSE = 0x01, 0x02, 0x03
CLOSE_NORMAL, CLOSE_REFUSED, CLOSE_DUPLICATE, CLOSE_ERROR = 0, 1, 2, 3
PIPE_HEADER = 1
ATT_HEADER = 3  # opcode + handle of a notification / write request
MIN_MTU, MAX_MTU = 23, 517
MAX_ATTRIBUTE = 512
_OPEN = struct.Struct(">BHB")
_HANDSHAKE_MAX = 4096
URGENT_MAX = 1024  # frames up to this size overtake bigger ones still waiting
_WORD = struct.Struct(">I")


def pdu_room(mtu: int) -> int:
    """Fragment bytes one GATT value carries at this ATT MTU: MTU - 3, and never more
    than 512, the longest attribute value (Core 5.3 Vol 3 Part F 3.2.9), which is what
    BlueZ refuses past ("Invalid Attribute Value Length") at MTU 516-517."""
    mtu = max(MIN_MTU, min(MAX_MTU, mtu))
    return min(mtu - ATT_HEADER, MAX_ATTRIBUTE) - PIPE_HEADER


def control_pdu(session: int, ctype: int, body: bytes = b"") -> bytes:
    return bytes((CONTROL | session, ctype)) + body


def open_pdu(session: int, *, version: int, mtu: int, window: int) -> bytes:
    return control_pdu(session, OPEN, _OPEN.pack(version, mtu, window))


@dataclass(frozen=True, slots=True)
class Pdu:
    """A parsed PDU header: ``ctype`` is None for data PDUs."""

    session: int
    ctype: int | None
    body: bytes


def parse_pdu(data: bytes) -> Pdu:
    if len(data) < 2:
        raise FrameDecodeError(f"PDU of {len(data)} bytes", field="pdu")
    session = data[0] & 0x7F
    if session == 0:
        raise FrameDecodeError("session id 0", field="pdu.session")
    if data[0] & CONTROL:
        return Pdu(session, data[1], bytes(data[2:]))
    return Pdu(session, None, bytes(data[1:]))


def parse_open(body: bytes) -> tuple[int, int, int]:
    """(version, mtu, window) of an OPEN body."""
    if len(body) != _OPEN.size:
        raise FrameDecodeError(f"OPEN body of {len(body)} bytes", field="pdu.open")
    version, mtu, window = _OPEN.unpack(body)
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise FrameDecodeError(f"MTU {mtu} out of range", field="pdu.open.mtu")
    if window < 2:
        raise FrameDecodeError(f"window {window} too small", field="pdu.open.window")
    return version, mtu, window


@dataclass(frozen=True, slots=True)
class SessionConfig:
    window: int = 32  # notifications in flight (credits); 32 x 514 B = 16 KiB
    keepalive_interval: float = 4.0
    dead_after: float = 12.0
    handshake_timeout: float = 10.0
    max_queue_bytes: int = 1 << 20
    reassembly_timeout: float = 30.0


class BleSession:
    """Handshake, channel, fragmentation and credits of one link. Sans-IO.

    The adapter calls ``receive(pdu, now=)`` with what arrived, ``send_frame`` for the
    node, and drains ``take_pdus()`` (respecting ``ready``); it watches ``peer`` (set when
    the handshake completed), ``frames`` (mesh frames received) and ``closed``.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        central: bool,
        session: int,
        mtu: int,
        now: float,
        config: SessionConfig | None = None,
    ) -> None:
        self.config = config or SessionConfig()
        self.central = central
        self.session = session
        self.mtu = mtu
        self._room = pdu_room(mtu)
        self._hs: LinkHandshake | None = LinkHandshake(
            identity, initiator=central, transport_kind=TRANSPORT_KIND
        )
        self._channel: SecureChannel | None = None
        self._fragmenter = Fragmenter()
        self._reassembler = Reassembler(
            max_message=HEADER_LEN + MAX_RECORD_BODY,
            max_partials=1,
            max_bytes=HEADER_LEN + MAX_RECORD_BODY,
            timeout=self.config.reassembly_timeout,
        )
        # Records are sealed when their turn comes, not when queued, so that small ones
        # (LINK_ACKs, announces, keepalives) can overtake big frames still waiting: the
        # AEAD nonce order is the transmission order either way.
        self._out: deque[bytes] = deque()  # PDUs ready: one record's fragments + control
        self._urgent: deque[tuple[int, bytes]] = deque()  # (record type, plaintext)
        self._bulk: deque[bytes] = deque()  # big DATA frames
        self._queued: set[bytes] = set()  # frames waiting or in transmission
        self._current: bytes | None = None  # the frame whose fragments are in _out
        self._current_left = 0  # its data PDUs still in _out
        self._queued_bytes = 0
        self.coalesced = 0  # retransmissions dropped: the same frame was still queued
        # Peripheral: data PDUs it may still notify. Central: data PDUs received since
        # its last CREDIT.
        self.credits = 0
        self._received_since_credit = 0
        self.peer: PublicIdentity | None = None
        self.handshake_hash = b""
        self.remote_ephemeral: bytes | None = None
        self.frames: list[bytes] = []
        self.closed = False
        self.close_reason = ""
        self.peer_closed = False
        self.started = now
        self.last_rx = now
        self.last_tx = now
        self.frames_dropped = 0
        if central:
            self._out.append(
                open_pdu(session, version=1, mtu=mtu, window=self.config.window)
            )
            self._send_record(RecordType.HANDSHAKE, self._hs.start())

    # --- what the adapter calls ---------------------------------------------------------
    @property
    def up(self) -> bool:
        return self._channel is not None and not self.closed

    def grant(self, window: int) -> None:
        """Peripheral: the OPEN's initial credits."""
        self.credits += window

    def ready(self) -> bool:
        """Is the next queued PDU allowed out now (credits for data on a peripheral)?"""
        if not self._current_left:
            self._refill()
        if not self._out:
            return False
        return self.central or self.credits > 0 or bool(self._out[0][0] & CONTROL)

    def take_pdus(self, limit: int = 1 << 30) -> list[bytes]:
        """Up to ``limit`` PDUs that may go out now, in order."""
        out: list[bytes] = []
        while len(out) < limit and self.ready():
            pdu = self._out.popleft()
            self._queued_bytes -= len(pdu)
            if not pdu[0] & CONTROL:
                self._current_left -= 1
                if not self.central:
                    self.credits -= 1
            out.append(pdu)
        return out

    @property
    def pending(self) -> int:
        return len(self._out) + len(self._urgent) + len(self._bulk)

    def send_frame(self, frame: bytes) -> bool:
        """Queue one mesh frame; False (dropped) if the link is not up or the queue full."""
        if not self.up or len(frame) > MAX_FRAME_LEN:
            self.frames_dropped += 1
            return False
        if frame in self._queued:
            self.coalesced += 1  # a retransmission of a frame that has not left yet
            return True
        if self._queued_bytes + len(frame) > self.config.max_queue_bytes:
            self.frames_dropped += 1  # the router's hop-by-hop ARQ resends
            return False
        self._queued.add(frame)
        self._queued_bytes += len(frame)
        if len(frame) <= URGENT_MAX:
            self._urgent.append((RecordType.DATA, frame))
        else:
            self._bulk.append(frame)
        return True

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Orderly close: a sealed CLOSE record if the channel is up, then a CLOSE PDU."""
        if self.closed:
            return
        self._drop_waiting()
        if self._channel is not None:
            self._enqueue(self._seal(RecordType.CLOSE, bytes([code])))
        self._out.append(control_pdu(self.session, CLOSE, bytes([code])))
        self.closed = True
        self.close_reason = reason

    def receive(self, pdu: Pdu, *, now: float) -> None:
        """One PDU of this session; ``WireError`` (a bad peer) closes the session."""
        if self.closed:
            return
        self.last_rx = now
        try:
            self._receive(pdu, now)
        except WireError as exc:
            self.closed = True
            self.close_reason = str(exc)
            self._out.append(control_pdu(self.session, CLOSE, bytes([CLOSE_ERROR])))

    def tick(self, *, now: float) -> None:
        """Timers: handshake timeout, keepalive ping, dead link, stale reassembly."""
        if self.closed:
            return
        cfg = self.config
        if self._channel is None and now - self.started > cfg.handshake_timeout:
            self.close("handshake timeout", CLOSE_ERROR)
            return
        if now - self.last_rx > cfg.dead_after:
            self.closed = True
            self.close_reason = "keepalive timeout"
            return
        if self._channel is not None and now - max(self.last_rx, self.last_tx) >= (
            cfg.keepalive_interval
        ):
            self.last_tx = now
            self._urgent.append((RecordType.PING, b""))
        self._reassembler.expire(now=now)

    def ping(self, *, now: float) -> None:
        """A PING now (the peer's PONG proves it is still there)."""
        if self._channel is not None and not self.closed:
            self.last_tx = now
            self._urgent.append((RecordType.PING, b""))

    # --- internals ----------------------------------------------------------------------
    def _receive(self, pdu: Pdu, now: float) -> None:
        if pdu.ctype is not None:
            self._control(pdu)
            return
        if self.central:
            self._received_since_credit += 1
            half = max(1, self.config.window // 2)
            if self._received_since_credit >= half:
                self._received_since_credit -= half
                self._out.appendleft(
                    control_pdu(self.session, CREDIT, half.to_bytes(2, "big"))
                )
        record = self._reassembler.feed(self.session, pdu.body, now=now)
        if record is not None:
            self._record(record)

    def _control(self, pdu: Pdu) -> None:
        if pdu.ctype == CREDIT and not self.central:
            if len(pdu.body) != 2:
                raise FrameDecodeError("CREDIT body must be 2 bytes", field="pdu.credit")
            self.credits = min(self.credits + int.from_bytes(pdu.body, "big"), 1 << 16)
        elif pdu.ctype == CLOSE:
            self.closed = True
            self.peer_closed = True
            self.close_reason = f"peer closed (reason {pdu.body[:1].hex() or '00'})"
        elif pdu.ctype == OPEN and not self.central:
            return  # a repeated OPEN of this session (the write was retried)
        else:
            raise FrameDecodeError(f"unexpected control PDU 0x{pdu.ctype:02x}", field="pdu.type")

    def _record(self, record: bytes) -> None:
        if len(record) < HEADER_LEN:
            raise FrameDecodeError("record shorter than its header", field="record")
        (word,) = _WORD.unpack_from(record)
        rtype, length = word >> 24, word & 0xFFFFFF
        if length != len(record) - HEADER_LEN:
            raise FrameDecodeError("record length does not match", field="record.length")
        header, body = record[:HEADER_LEN], record[HEADER_LEN:]
        channel = self._channel
        if channel is None:
            self._handshake(rtype, body)
            return
        plain = channel.open(header, body)
        if rtype == RecordType.DATA:
            self.frames.append(plain)
        elif rtype == RecordType.PING:
            self._urgent.append((RecordType.PONG, plain))
        elif rtype == RecordType.CLOSE:
            self.closed = True
            self.peer_closed = True
            self.close_reason = f"peer closed (reason {plain[:1].hex() or '00'})"
        elif rtype != RecordType.PONG:
            raise FrameDecodeError(f"unexpected record type {rtype}", field="record.type")

    def _handshake(self, rtype: int, body: bytes) -> None:
        hs = self._hs
        if rtype != RecordType.HANDSHAKE or hs is None:
            raise HandshakeError("expected a handshake record", field="record.type")
        if len(body) > _HANDSHAKE_MAX:
            raise HandshakeError("handshake record too long", field="record.length")
        reply = hs.receive(body)
        if self.remote_ephemeral is None:
            self.remote_ephemeral = hs.remote_ephemeral
        if reply:
            self._send_record(RecordType.HANDSHAKE, reply)
        if not hs.complete:
            return
        result = hs.result()
        self._hs = None
        self.peer = result.peer
        self.handshake_hash = result.handshake_hash
        self._channel = SecureChannel(result.send, result.recv)

    def _send_record(self, rtype: int, body: bytes) -> None:
        self._enqueue(encode_record(rtype, body))

    def _seal(self, rtype: int, body: bytes) -> bytes:
        assert self._channel is not None
        header, ciphertext = self._channel.seal(rtype, body)
        return header + ciphertext

    def _refill(self) -> None:
        """The previous record has left: seal the next one (urgent first) into PDUs."""
        if self._current is not None:
            self._queued.discard(self._current)
            self._current = None
        if self._channel is None or self.closed:
            return
        if self._urgent:
            rtype, body = self._urgent.popleft()
        elif self._bulk:
            rtype, body = RecordType.DATA, self._bulk.popleft()
        else:
            return
        if rtype == RecordType.DATA:
            self._queued_bytes -= len(body)
            self._current = body
        self._enqueue(self._seal(rtype, body))

    def _drop_waiting(self) -> None:
        """Forget records not sealed yet (closing: they will never be sent)."""
        self._urgent.clear()
        self._bulk.clear()
        self._queued.clear()
        self._queued_bytes = sum(len(p) for p in self._out)

    def _enqueue(self, record: bytes) -> None:
        head = bytes((self.session,))
        for frag in self._fragmenter.fragments(record, self._room):
            pdu = head + frag
            self._out.append(pdu)
            self._queued_bytes += len(pdu)
            self._current_left += 1
