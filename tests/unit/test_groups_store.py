"""group_outbox / group_payloads / group_sent (migration 5) and group ids in history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.address import NodeAddress
from meshd.node_api import Direction
from meshd.router.events import DeliveryState
from meshd.store import Store
from meshd.store.groups import GroupCarrier, GroupTables

ME = NodeAddress(b"\x01" * 16)
A = NodeAddress(b"\x02" * 16)
B = NodeAddress(b"\x03" * 16)
GID = b"\x07" * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "meshd.db")
    yield s
    s.close()


def carrier(cid: bytes, dst: NodeAddress, payload: bytes, mid: bytes | None) -> GroupCarrier:
    return GroupCarrier(cid, dst, payload, mid, 100.0, 200.0, DeliveryState.QUEUED)


def count(store: Store, table: str) -> int:
    return int(store._read(f"SELECT count(*) FROM {table}")[0][0])


def test_a_fan_out_stores_its_payload_once_and_survives_reopen(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    t = GroupTables(store)
    data = b"\x21" + b"c" * 3000
    t.add_carriers([carrier(b"1" * 8, A, data, b"m" * 16), carrier(b"2" * 8, B, data, b"m" * 16),
                    carrier(b"3" * 8, A, b"\x22commit", None)])  # fmt: skip
    store.close()
    store = Store.open(tmp_path / "db")
    t = GroupTables(store)
    assert count(store, "group_payloads") == 2
    got, bad = t.carriers()
    assert bad == []
    assert {(c.carrier_id, c.dst, c.payload, c.message_id) for c in got} == {
        (b"1" * 8, A, data, b"m" * 16), (b"2" * 8, B, data, b"m" * 16),
        (b"3" * 8, A, b"\x22commit", None),
    }  # fmt: skip
    t.carrier_state(b"1" * 8, DeliveryState.HELD_BY_CUSTODIAN)
    assert {c.carrier_id: c.state for c in t.carriers()[0]}[b"1" * 8] is (
        DeliveryState.HELD_BY_CUSTODIAN
    )
    t.carrier_done(b"1" * 8)
    t.carrier_done(b"3" * 8)
    t.prune_payloads()
    assert count(store, "group_payloads") == 1  # B's copy still needs the data
    t.carrier_done(b"2" * 8)
    t.prune_payloads()
    assert count(store, "group_payloads") == 0 and t.carriers() == ([], [])
    store.close()


def test_a_carrier_without_its_payload_is_reported_and_left(store: Store) -> None:
    t = GroupTables(store)
    t.add_carriers([carrier(b"1" * 8, A, b"x", None)])
    store._write("DELETE FROM group_payloads", ())
    got, bad = t.carriers()
    assert got == [] and len(bad) == 1 and "payload row is missing" in bad[0]
    assert count(store, "group_outbox") == 1


def test_tally_and_the_senders_history_row(store: Store) -> None:
    t = GroupTables(store)
    mid = b"m" * 16
    rec = store.add_group_outgoing(message_id=mid, app_id="chat", group_id=GID, sender=ME,
                                   content=b"hi all", created_at=100.0)  # fmt: skip
    t.add_sent(mid, ME, GID, "chat", 2, now=100.0)
    assert rec.group_id == GID and rec.state is DeliveryState.QUEUED
    first = t.tally(mid, delivered=True)
    assert first is not None and not first.done
    last = t.tally(mid, delivered=False)
    assert last is not None and last.done and (last.delivered, last.failed) == (1, 1)
    assert t.tally(mid, delivered=True) is None  # finished: forgotten
    store.set_outgoing_state(mid, DeliveryState.FAILED, "1 of 2 copies not delivered", at=101.0)
    [row] = store.history("chat", peer=None, limit=10, before_cursor=None)
    assert (row.group_id, row.direction, row.peer, row.state) == (
        GID, Direction.OUTGOING, ME, DeliveryState.FAILED
    )
    [g] = t.messages(GID, "chat", limit=10)
    assert (g.sender, g.content, g.state) == (ME, b"hi all", DeliveryState.FAILED)
    got = store.get_message("chat", mid)
    assert got is not None and got.group_id == GID


def test_received_group_message_carries_its_group(store: Store) -> None:
    mid = b"r" * 16
    store.add_incoming(message_id=mid, app_id="chat", src=A, content=b"yo", received_at=1.0,
                       hops=0)  # fmt: skip
    store.set_group_id(A, mid, GID)
    store.add_incoming(message_id=b"s" * 8, app_id="chat", src=A, content=b"1:1",
                       received_at=2.0, hops=1)  # fmt: skip
    rows = store.history("chat", peer=None, limit=10, before_cursor=None)
    assert [(r.payload, r.group_id) for r in rows] == [(b"1:1", None), (b"yo", GID)]
