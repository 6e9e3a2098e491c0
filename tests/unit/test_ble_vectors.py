"""The BLE hex vectors of docs/wire-format.md decode and re-encode byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

from meshd.transports.ble_advert import AdvertSummary
from meshd.transports.ble_fragment import Reassembler, fragment
from meshd.transports.ble_session import CREDIT, OPEN, open_pdu, parse_open, parse_pdu, pdu_room

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
_BLOCK = re.compile(r"```hex vector=(ble-[\w-]+)\n(.*?)```", re.S)
VECTORS = {
    name: [bytes.fromhex(line) for line in text.split()]
    for name, text in _BLOCK.findall(DOC.read_text(encoding="utf-8"))
}


def test_advert_vector() -> None:
    (data,) = VECTORS["ble-advert"]
    s = AdvertSummary.decode(data)
    assert (s.version, s.free_slots, s.battery, s.charging) == (1, 3, 80, False)
    assert (s.addr, s.cluster) == (b"\xab\xcd", 0x1234)
    assert s.encode() == data


def test_control_vectors() -> None:
    (data,) = VECTORS["ble-open"]
    pdu = parse_pdu(data)
    assert (pdu.session, pdu.ctype) == (5, OPEN)
    assert parse_open(pdu.body) == (1, 185, 32)
    assert open_pdu(5, version=1, mtu=185, window=32) == data
    (credit,) = VECTORS["ble-credit"]
    pdu = parse_pdu(credit)
    assert (pdu.session, pdu.ctype, int.from_bytes(pdu.body, "big")) == (5, CREDIT, 16)


def test_fragment_vectors() -> None:
    pdus = VECTORS["ble-fragments-mtu23"]
    record = bytes(range(40))
    assert [b"\x05" + f for f in fragment(record, 7, pdu_room(23))] == pdus
    rx = Reassembler()
    out = [rx.feed(5, parse_pdu(p).body, now=0.0) for p in pdus]
    assert out == [None, None, record]
    (single,) = VECTORS["ble-fragment-single"]
    assert b"\x05" + fragment(b"hello", 8, pdu_room(23))[0] == single
    assert rx.feed(5, parse_pdu(single).body, now=0.0) == b"hello"
