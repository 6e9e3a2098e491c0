"""Custody persistence: the core's CustodyTaken/CustodyReleased events and the store's
custody_frames table (meshd/store/router_state.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.router.core import CoreConfig, MeshCore
from meshd.router.e2e_bodies import DataBody
from meshd.router.events import CustodyReleased, CustodyTaken
from meshd.router.frames import Frame, FrameFlags, FrameType
from meshd.store import Store
from meshd.store.router_state import RouterState
from tests.unit.endpoint_harness import always, drain, endpoint, never, no_keys

SRC, DST = Identity.generate().address, Identity.generate().address


def data(frame_id: bytes, src: object = SRC, payload: bytes = b"p") -> Frame:
    return Frame(FrameType.DATA, frame_id, src, DST,  # type: ignore[arg-type]
                 DataBody(payload, 600).encode(), FrameFlags.CUSTODY_ALLOWED, ttl=8)


@pytest.fixture
def state(tmp_path: Path) -> RouterState:
    return RouterState(Store.open(tmp_path / "s.db"))


def test_rows_round_trip_keyed_by_src_and_id(state: RouterState) -> None:
    other = Identity.generate().address
    f1, f2 = data(b"\x01" * 8), data(b"\x01" * 8, src=other, payload=b"q")
    state.put_custody(f1, held_at=10.0, hold_until=100.0)
    state.put_custody(f2, held_at=11.0, hold_until=101.0)  # same id, other source: kept
    rows, bad = state.custody()
    assert bad == [] and [(r.frame, r.held_at, r.hold_until) for r in rows] == [
        (f1, 10.0, 100.0), (f2, 11.0, 101.0)]
    assert state.delete_custody(SRC, b"\x01" * 8)
    assert not state.delete_custody(SRC, b"\x01" * 8)
    assert [r.frame for r in state.custody()[0]] == [f2]


def test_taken_event_is_durable_and_in_unix_time(state: RouterState) -> None:
    frame = data(b"\x02" * 8)
    state._store.durable_pending = False
    state.on_custody_event(CustodyTaken(frame, 50.0), wall=1_000.0, offset=900.0)
    assert state._store.durable_pending  # the receipt waits for the fsync
    [row] = state.custody()[0]
    assert (row.held_at, row.hold_until) == (1_000.0, 950.0)
    state.on_custody_event(CustodyReleased(SRC, frame.frame_id, "delivered"),
                           wall=1_001.0, offset=900.0)
    assert state.custody_count() == 0


def test_restore_loads_live_rows_and_deletes_the_rest(state: RouterState) -> None:
    live, old, spare = data(b"\x03" * 8), data(b"\x04" * 8), data(b"\x05" * 8)
    state.put_custody(live, held_at=1.0, hold_until=5_000.0)
    state.put_custody(old, held_at=0.5, hold_until=900.0)  # over while the node was down
    state.put_custody(spare, held_at=2.0, hold_until=5_000.0)  # over the core's bound
    state._w("INSERT INTO custody_frames VALUES (?, ?, ?, ?, ?, ?)",
             (SRC.raw, b"\x06" * 8, DST.raw, b"garbage", 3.0, 5_000.0))
    core = MeshCore(Identity.generate(), now=100.0, rng=random.Random(1),
                    config=CoreConfig(custody_limit_frames=1))
    restored, dropped, bad = state.restore_custody(core, now=100.0, wall=1_000.0)
    assert (restored, dropped, len(bad)) == (1, 3, 1) and "custody row" in bad[0]
    [(frame, until)] = core.custody_records()
    assert frame == live and until == pytest.approx(4_100.0)  # unix 5000 -> core time
    assert [r.frame for r in state.custody()[0]] == [live]
    assert state.custody_count() == 1


def test_custodian_reports_taken_before_its_receipt_then_released() -> None:
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    mid = a.send(b.address, b"x", now=0.0, lifetime=1000.0, message_id=None)
    [frame] = a.poll(now=0.0, can_route=always)
    assert r.take_custody(frame, now=0.0)
    [taken] = [e for e in drain(r) if isinstance(e, CustodyTaken)]
    assert taken.frame == frame and taken.hold_until == 1000.0
    [receipt] = r.poll(now=0.0, can_route=never)  # queued after the event
    assert receipt.type is FrameType.CUSTODY_RECEIPT
    assert r.take_custody(frame, now=1.0)  # a copy again: no second event
    assert not [e for e in drain(r) if isinstance(e, CustodyTaken)]
    r.path_available(b.address, now=2.0)
    [offer] = [f for f in r.poll(now=2.0, can_route=always)
               if f.type is FrameType.CUSTODY_OFFER]
    b.on_local_frame(offer, now=2.1, key_of=no_keys)
    drain(b)
    [to_r] = b.poll(now=2.1, can_route=always)
    r.on_local_frame(to_r, now=2.2, key_of=no_keys)
    assert [e for e in drain(r) if isinstance(e, CustodyReleased)] == [
        CustodyReleased(a.address, mid, "delivered")]


def test_custodian_reports_expiry() -> None:
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    mid = a.send(b.address, b"x", now=0.0, lifetime=10.0, message_id=None)
    [frame] = a.poll(now=0.0, can_route=always)
    assert r.take_custody(frame, now=0.0)
    drain(r)
    r.poll(now=11.0, can_route=never)
    assert [e for e in drain(r) if isinstance(e, CustodyReleased)] == [
        CustodyReleased(a.address, mid, "expired")]


def test_only_the_keyed_custody_table_exists(tmp_path: Path) -> None:
    """Migration 9 dropped the first custody table (keyed by frame id alone, never used)."""
    store = Store.open(tmp_path / "state.db")
    try:
        names = {r[0] for r in store._read("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        store.close()
    assert "custody_frames" in names and "custody" not in names
