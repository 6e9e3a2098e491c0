"""Two BLE sessions (central, peripheral) back to back: handshake, frames, credits."""

from __future__ import annotations

import pytest

from meshd.crypto.identity import Identity
from meshd.errors import FrameDecodeError
from meshd.transports.ble_session import (
    CONTROL,
    BleSession,
    SessionConfig,
    parse_open,
    parse_pdu,
    pdu_room,
)

A, B = Identity.generate(), Identity.generate()


def _pair(mtu: int, window: int = 8) -> tuple[BleSession, BleSession]:
    cfg = SessionConfig(window=window)
    central = BleSession(A, central=True, session=5, mtu=mtu, now=0.0, config=cfg)
    (open_pdu,) = central.take_pdus(1)
    pdu = parse_pdu(open_pdu)
    assert pdu.session == 5 and pdu.ctype == 1
    _, peer_mtu, peer_window = parse_open(pdu.body)
    periph = BleSession(B, central=False, session=5, mtu=peer_mtu, now=0.0, config=cfg)
    periph.grant(peer_window)
    return central, periph


def _pump(central: BleSession, periph: BleSession, mtu: int, *, now: float = 0.0) -> int:
    """Move PDUs both ways until nothing moves; the most notifications in flight."""
    most = 0
    while True:
        moved = False
        for pdu in central.take_pdus(4):  # writes with response: one at a time really
            assert len(pdu) <= min(mtu - 3, 512)
            periph.receive(parse_pdu(pdu), now=now)
            moved = True
        burst = periph.take_pdus()
        most = max(most, sum(1 for p in burst if not p[0] & CONTROL))
        for pdu in burst:
            assert len(pdu) <= min(mtu - 3, 512)
            central.receive(parse_pdu(pdu), now=now)
            moved = True
        if not moved:
            return most


@pytest.mark.parametrize("mtu", [23, 185, 517])
def test_handshake_then_frames_both_ways_with_credits(mtu: int) -> None:
    central, periph = _pair(mtu)
    _pump(central, periph, mtu)
    assert central.up and periph.up
    assert central.peer is not None and central.peer.address == B.address
    assert periph.peer is not None and periph.peer.address == A.address
    assert central.handshake_hash == periph.handshake_hash
    big = bytes(range(256)) * 200  # 51,200 bytes
    assert central.send_frame(big) and periph.send_frame(big)
    assert periph.send_frame(b"small")
    most = _pump(central, periph, mtu)
    assert most <= 8  # never more notifications than the window
    assert periph.frames == [big]
    assert central.frames == [b"small", big]  # the small frame overtook the waiting big one
    assert pdu_room(mtu) == min(mtu - 3, 512) - 1


def test_keepalive_and_dead_link() -> None:
    central, periph = _pair(185)
    _pump(central, periph, 185)
    central.tick(now=5.0)  # idle past keepalive_interval: a PING
    assert central.pending
    _pump(central, periph, 185, now=5.0)
    assert periph.last_rx == 5.0 and central.last_rx == 5.0  # PONG came back
    periph.tick(now=20.0)
    assert periph.closed and periph.close_reason == "keepalive timeout"


def test_close_reaches_the_peer_and_bad_pdus_close_the_session() -> None:
    central, periph = _pair(100)
    _pump(central, periph, 100)
    periph.close("advised to drop")
    _pump(central, periph, 100)
    assert central.closed and central.peer_closed
    c2, p2 = _pair(100)
    _pump(c2, p2, 100)
    p2.receive(parse_pdu(bytes([5, 0x40, 0]) + b"junk"), now=1.0)  # stray fragment
    assert p2.closed and "fragment" in p2.close_reason
    with pytest.raises(FrameDecodeError, match="session id 0"):
        parse_pdu(b"\x00\x01")
    with pytest.raises(FrameDecodeError, match="MTU"):
        parse_open(bytes([1, 0, 5, 8]))


def test_tampered_record_closes_the_link() -> None:
    central, periph = _pair(517)
    _pump(central, periph, 517)
    central.send_frame(b"hello")
    (pdu,) = central.take_pdus()
    bad = pdu[:-1] + bytes([pdu[-1] ^ 1])
    periph.receive(parse_pdu(bad), now=0.0)
    assert periph.closed and "authentication" in periph.close_reason
    assert periph.frames == []


def test_frames_dropped_before_handshake_and_past_the_queue_bound() -> None:
    cfg = SessionConfig(max_queue_bytes=1000)
    central = BleSession(A, central=True, session=3, mtu=100, now=0.0, config=cfg)
    assert not central.send_frame(b"x")
    periph = BleSession(B, central=False, session=3, mtu=100, now=0.0, config=cfg)
    periph.grant(8)
    _pump(central, periph, 100)
    assert central.send_frame(b"y" * 600)
    assert not central.send_frame(b"z" * 600)
    assert central.frames_dropped == 2


def test_small_frames_overtake_big_ones_and_retransmissions_coalesce() -> None:
    central, periph = _pair(23)
    _pump(central, periph, 23)
    big = b"B" * 5000
    assert central.send_frame(big)
    first = central.take_pdus(3)  # the big frame has started
    assert len(first) == 3
    assert central.send_frame(big)  # a retransmission while it is still going out
    assert central.coalesced == 1
    assert central.send_frame(b"ack-1")
    assert central.send_frame(b"C" * 3000)
    assert central.send_frame(b"ack-2")
    for pdu in first:
        periph.receive(parse_pdu(pdu), now=0.0)
    _pump(central, periph, 23)
    # The big frame in flight finishes first; then small frames, then the other big one.
    assert periph.frames == [big, b"ack-1", b"ack-2", b"C" * 3000]
    assert central.send_frame(big)  # gone: a new retransmission is queued again
    _pump(central, periph, 23)
    assert periph.frames[-1] == big and central.coalesced == 1
