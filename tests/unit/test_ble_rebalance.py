"""The transport honours the router's advice: at max_links with a candidate waiting, it
closes the oldest link advised keep=False (one trade per rebalance interval) and opens
a connection; kept links are never traded. No BlueZ: links are real sessions wired
back to back, connection attempts are recorded."""

from __future__ import annotations

import asyncio

import pytest

from meshd.crypto.identity import Identity
from meshd.router.events import LinkId
from meshd.transports.base import Link
from meshd.transports.ble import BleConfig, BleTransport
from meshd.transports.ble_advert import AdvertSummary
from meshd.transports.ble_link import BleLink
from meshd.transports.ble_policy import Candidate
from meshd.transports.ble_session import BleSession, parse_pdu


class _Events:
    def __init__(self) -> None:
        self.up: list[Link] = []
        self.down: list[LinkId] = []

    def link_up(self, link: Link) -> LinkId:
        self.up.append(link)
        return LinkId(len(self.up))

    def frame_received(self, link_id: LinkId, frame: bytes) -> None:
        pass

    def link_down(self, link_id: LinkId) -> None:
        self.down.append(link_id)


def _authenticated_session(me: Identity, peer: Identity, sid: int) -> BleSession:
    """Our central session to ``peer``, handshake completed."""
    mine = BleSession(me, central=True, session=sid, mtu=185, now=0.0)
    theirs = BleSession(peer, central=False, session=sid, mtu=185, now=0.0)
    theirs.grant(32)
    mine.take_pdus(1)  # OPEN
    for _ in range(4):
        for pdu in mine.take_pdus():
            theirs.receive(parse_pdu(pdu), now=0.0)
        for pdu in theirs.take_pdus():
            mine.receive(parse_pdu(pdu), now=0.0)
    assert mine.up
    return mine


def _add_link(ble: BleTransport, me: Identity, device: str, sid: int) -> BleLink:
    link = BleLink(_authenticated_session(me, Identity.generate(), sid), device=device,
                   conn=None, rssi=-60, wake=lambda _l: None)
    ble._centrals.add(link)
    ble._process(link)  # announces it: link_up
    assert link.link_id is not None
    return link


def _candidate(device: str, addr: bytes, seen: float) -> Candidate:
    return Candidate(device, AdvertSummary(1, 3, 90, False, addr, 7), -50, 0.0, seen)


@pytest.mark.parametrize("interval", [0.0, 15.0])
async def test_advised_link_is_traded_for_a_waiting_candidate(interval: float) -> None:
    me = Identity.generate()
    ble = BleTransport(me, config=BleConfig(max_links=3, rebalance_interval=interval))
    ble._events = _Events()
    ble._up = True
    ble._own = type(me.address)(bytes(16))  # the smallest address: we are the central
    kept = _add_link(ble, me, "kept", 1)
    adv1 = _add_link(ble, me, "adv1", 2)
    await asyncio.sleep(0.01)
    adv2 = _add_link(ble, me, "adv2", 3)
    for link, keep in ((kept, True), (adv1, False), (adv2, False)):
        assert link.link_id is not None
        ble.advise(link.link_id, keep)
    connects: list[str] = []

    async def fake_connect(cand: Candidate) -> None:
        connects.append(cand.device)

    ble._connect = fake_connect  # type: ignore[method-assign]
    ble._candidates["new"] = _candidate("new", b"\xff\xff", 100.0)
    ble._connect_some(100.0)
    await asyncio.sleep(0)
    assert adv1.session.closed and not adv2.session.closed and not kept.session.closed
    assert connects == ["new"]

    # The trade settles: adv1 is gone, "new" is linked; at the bound again.
    ble._process(adv1)
    ble._centrals.discard(adv1)
    ble._busy.discard("new")
    _add_link(ble, me, "new", 4)
    ble._candidates["newer"] = _candidate("newer", b"\xff\xfe", 101.0)
    ble._connect_some(101.0)
    await asyncio.sleep(0)
    if interval:  # one trade per interval: adv2 stays, nothing opens
        assert not adv2.session.closed and connects == ["new"]
    else:
        assert adv2.session.closed and connects == ["new", "newer"]
    assert not kept.session.closed  # a kept link is never traded
