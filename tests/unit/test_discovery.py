"""LAN discovery: beacon codec and the sans-IO dial policy (meshd.transports.discovery)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.errors import WireError
from meshd.transports.discovery import (
    BEACON_LEN,
    Beacon,
    DiscoveryConfig,
    DiscoveryCore,
    decode_beacon,
    encode_beacon,
)

LOW = NodeAddress(b"\x01" * 16)
MID = NodeAddress(b"\x05" * 16)
HIGH = NodeAddress(b"\x09" * 16)
CFG = DiscoveryConfig(fast_interval=2.0, fast_count=3, slow_interval=10.0, defer=3.0,
                      backoff_initial=1.0, backoff_max=8.0, forget_after=100.0)


def core(own: NodeAddress, now: float = 0.0) -> DiscoveryCore:
    return DiscoveryCore(own=own, rng=random.Random(1), now=now, config=CFG)


def test_beacon_round_trip_and_known_bytes() -> None:
    b = Beacon(address=MID, tcp_port=4717)
    wire = encode_beacon(b)
    assert wire == b"MSHB\x01\x00\x12\x6d" + b"\x05" * 16
    assert len(wire) == BEACON_LEN
    assert decode_beacon(wire) == b
    assert decode_beacon(wire + b"future fields") == b


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"MSHB\x01\x00\x12", "beacon"),
        (b"XXXX\x01\x00\x12\x6d" + b"\x05" * 16, "beacon.magic"),
        (b"MSHB\x00\x00\x12\x6d" + b"\x05" * 16, "beacon.version"),
        (b"MSHB\x01\x00\x00\x00" + b"\x05" * 16, "beacon.port"),
    ],
)
def test_bad_beacons_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(WireError) as info:
        decode_beacon(data)
    assert info.value.field == field


@given(st.binary(max_size=64))
def test_decoder_only_raises_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        assert decode_beacon(data).tcp_port > 0


def test_beacons_fast_then_slow_and_fast_again_on_interface_change() -> None:
    c = core(LOW)
    assert c.next_beacon_at == 0.0
    now, gaps = 0.0, []
    for _ in range(6):
        c.beacon_sent(now=now)
        gaps.append(c.next_beacon_at - now)
        now = c.next_beacon_at
    assert all(1.8 <= g <= 2.2 for g in gaps[:3])
    assert all(9.0 <= g <= 11.0 for g in gaps[3:])
    c.interfaces_changed(now=now + 1)
    assert c.next_beacon_at == now + 1


def test_own_beacon_and_linked_peers_are_not_dialed() -> None:
    c = core(LOW)
    assert c.on_beacon(Beacon(LOW, 4717), "fe80::1%eth0", now=1, linked=False) is None
    assert c.on_beacon(Beacon(HIGH, 4717), "fe80::2%eth0", now=1, linked=True) is None


def test_smaller_address_dials_at_once_larger_defers() -> None:
    small = core(LOW)
    req = small.on_beacon(Beacon(HIGH, 4800), "fe80::9%veth0", now=1.0, linked=False)
    assert req is not None and (req.address, req.host, req.port) == (HIGH, "fe80::9%veth0", 4800)
    # While that dial runs, more beacons do not start another one.
    assert small.on_beacon(Beacon(HIGH, 4800), "10.0.0.9", now=1.5, linked=False) is None

    big = core(HIGH)
    assert big.on_beacon(Beacon(LOW, 4717), "10.0.0.1", now=1.0, linked=False) is None
    assert big.poll(now=3.9, linked=set()) == []
    assert big.next_deadline() <= 4.0
    [late] = big.poll(now=4.0, linked=set())
    assert late.address == LOW
    # ...unless the smaller one dialed us meanwhile.
    big2 = core(HIGH)
    big2.on_beacon(Beacon(LOW, 4717), "10.0.0.1", now=1.0, linked=False)
    assert big2.poll(now=5.0, linked={LOW}) == []


def test_failed_dials_back_off_exponentially_with_a_cap() -> None:
    c = core(LOW)
    c.beacon_sent(now=1000.0)  # keep the beacon schedule out of next_deadline()
    now = 0.0
    req = c.on_beacon(Beacon(HIGH, 1), "h", now=now, linked=False)
    delays = []
    for _ in range(6):
        assert req is not None
        c.dial_finished(HIGH, ok=False, now=now)
        assert c.on_beacon(Beacon(HIGH, 1), "h", now=now, linked=False) is None
        due = c.next_deadline()
        delays.append(due - now)
        now = due
        req = c.on_beacon(Beacon(HIGH, 1), "h", now=now, linked=False)
    assert delays[0] == pytest.approx(1.0, rel=0.25)
    assert delays[1] == pytest.approx(2.0, rel=0.25)
    assert delays[2] == pytest.approx(4.0, rel=0.25)
    assert max(delays) <= 8.0 * 1.2
    c.dial_finished(HIGH, ok=True, now=now)
    # After a good link, a later beacon (link gone) dials again at once.
    assert c.on_beacon(Beacon(HIGH, 1), "h", now=now + 50, linked=False) is not None


def test_silent_peers_are_not_dialed_and_then_forgotten() -> None:
    c = core(HIGH)
    c.on_beacon(Beacon(LOW, 1), "h", now=0.0, linked=False)
    assert c.poll(now=25.0, linked=set()) == []  # no beacon for > 2 slow intervals
    c.poll(now=200.0, linked=set())
    assert c.next_deadline() == c.next_beacon_at


def test_fake_beacon_floods_are_bounded() -> None:
    cfg = DiscoveryConfig(max_peers=5, max_concurrent_dials=2)
    c = DiscoveryCore(own=NodeAddress(b"\x00" * 16), rng=random.Random(1), now=0.0, config=cfg)
    dials = [
        c.on_beacon(Beacon(NodeAddress(bytes([i + 1]) * 16), 1), "h", now=0.0, linked=False)
        for i in range(50)
    ]
    started = [d for d in dials if d is not None]
    assert len(started) == 2  # concurrent dials capped
    c.dial_finished(started[0].address, ok=False, now=0.1)
    # The freed slot goes to a known peer waiting for it; the table never grew past 5.
    more = c.poll(now=0.2, linked=set())
    assert len(more) == 1 and more[0].address not in {d.address for d in started}
    assert c.on_beacon(Beacon(NodeAddress(b"\x7f" * 16), 1), "h", now=0.3, linked=False) is None
    assert len(c._peers) == 5
