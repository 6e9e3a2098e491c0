"""BLE connection choice: who initiates, ranking, rebalancing, scan duty cycle; advert codec."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.errors import FrameDecodeError, WireError
from meshd.transports.ble_advert import (
    COMPANY_ID,
    AdvertSummary,
    fold_cluster,
    summary_from_advert,
)
from meshd.transports.ble_policy import Candidate, LinkView, plan, rank, scan_duty


def _summary(addr: bytes, *, slots: int = 3, cluster: int = 0, battery: int | None = 80
             ) -> AdvertSummary:
    return AdvertSummary(1, slots, battery, False, addr, cluster)


@given(
    slots=st.integers(0, 15),
    battery=st.none() | st.integers(0, 100),
    charging=st.booleans(),
    addr=st.binary(min_size=2, max_size=2),
    cluster=st.integers(0, 0xFFFF),
)
def test_advert_round_trip(
    slots: int, battery: int | None, charging: bool, addr: bytes, cluster: int
) -> None:
    s = AdvertSummary(1, slots, battery, charging, addr, cluster)
    data = s.encode()
    assert len(data) == 6
    assert AdvertSummary.decode(data) == s
    assert summary_from_advert({COMPANY_ID: data}) == s


@given(st.binary(max_size=10))
def test_advert_decode_only_raises_frame_decode_error(data: bytes) -> None:
    with contextlib.suppress(FrameDecodeError):
        AdvertSummary.decode(data)


def test_advert_vector_and_errors() -> None:
    s = AdvertSummary(1, 20, None, True, b"\xab\xcd", 0x1234)
    assert s.encode().hex() == "1fffabcd1234"  # slots capped at 15, battery unknown+charging
    with pytest.raises(FrameDecodeError, match="battery level 101"):
        AdvertSummary.decode(bytes.fromhex("1065abcd1234"))
    with pytest.raises(WireError, match=r"advert\.addr"):
        AdvertSummary(1, 1, 50, False, b"x", 0).encode()
    assert summary_from_advert({COMPANY_ID: b"\x20" + bytes(5)}) is None  # other version
    assert summary_from_advert({0x004C: s.encode()}) is None
    assert fold_cluster(None) == 0 and fold_cluster(0x12345678) == 0x1234 ^ 0x5678


def _cand(dev: str, addr: bytes, *, rssi: int = -60, seen: float = 0.0, **kw: object
          ) -> Candidate:
    return Candidate(dev, _summary(addr, **kw), rssi, seen, 10.0)  # type: ignore[arg-type]


def test_smaller_address_initiates_larger_waits_for_grace() -> None:
    own = b"\x50\x00"
    lower, higher = _cand("L", b"\x10\x00", seen=9.0), _cand("H", b"\x90\x00", seen=9.0)
    got = rank([lower, higher], own_addr=own, own_cluster=0, linked=set(), busy=set(),
               now=10.0, grace=5.0)
    assert [c.device for c in got] == ["H"]
    old_lower = _cand("L", b"\x10\x00", seen=1.0)
    got = rank([old_lower], own_addr=own, own_cluster=0, linked=set(), busy=set(),
               now=10.0, grace=5.0)
    assert [c.device for c in got] == ["L"]


def test_rank_skips_linked_full_busy_and_prefers_bridges_then_signal() -> None:
    own = b"\x00\x01"
    cands = [
        _cand("linked", b"\x10\x00"),
        _cand("full", b"\x20\x00", slots=0),
        _cand("busy", b"\x30\x00"),
        _cand("near", b"\x40\x00", rssi=-45, cluster=7),
        _cand("far", b"\x50\x00", rssi=-90, cluster=7),
        _cand("bridge", b"\x60\x00", rssi=-80, cluster=9),
        _cand("unknown-cluster", b"\x70\x00", rssi=-80, cluster=0),
    ]
    got = rank(cands, own_addr=own, own_cluster=7, linked={b"\x10\x00"}, busy={"busy"},
               now=10.0, grace=5.0)
    assert [c.device for c in got] == ["bridge", "near", "unknown-cluster", "far"]


def test_plan_bounds_links_and_rebalances_only_advised_links() -> None:
    links = [LinkView(1, b"a", True, 0.0), LinkView(2, b"b", False, 5.0),
             LinkView(3, b"c", False, 1.0)]
    assert plan(links, max_links=3, waiting=0) == ([], 0)
    assert plan(links, max_links=3, waiting=2) == ([3], 1)  # oldest advised link goes
    assert plan(links, max_links=1, waiting=0) == ([3, 2], 0)
    kept = [LinkView(1, b"a", True, 0.0), LinkView(2, b"b", True, 0.0)]
    assert plan(kept, max_links=2, waiting=5) == ([], 0)
    assert plan(kept, max_links=4, waiting=5) == ([], 2)


def test_scan_duty_falls_with_battery() -> None:
    assert scan_duty(None, False)[1] == 0.0
    assert scan_duty(10, True)[1] == 0.0
    on_mid, off_mid = scan_duty(40, False)
    on_low, off_low = scan_duty(10, False)
    assert on_mid / (on_mid + off_mid) > on_low / (on_low + off_low) > 0
