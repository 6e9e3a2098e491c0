"""The event log's in-memory tail: the same events as the database, only committed ones,
per app, and the store when a reader is behind the tail or a message is not in memory."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.address import NodeAddress
from meshd.errors import StoreError
from meshd.node_api import AppEvent, AppEventKind
from meshd.router.events import DeliveryState
from meshd.store import Store
from meshd.store.events import TAIL_MAX

A = NodeAddress(b"\x01" * 16)
B = NodeAddress(b"\x02" * 16)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "meshd.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    s = Store.open(path)
    yield s
    s.close()


def _from_db(path: Path, app: str, cursor: int, upto: int, limit: int = 10_000) -> list[AppEvent]:
    """What a fresh store (empty tail: every read is SQL) returns for the same query."""
    other = Store.open(path)
    try:
        assert other._tail == []
        return other.events_after(app, cursor, limit=limit, upto=upto)
    finally:
        other.close()


def _traffic(store: Store, n: int, *, start: int = 0) -> None:
    """Outgoing (with state changes), incoming and node-wide events for two apps."""
    for i in range(start, start + n):
        mid = i.to_bytes(8, "big")
        app = "chat" if i % 3 else "files"
        store.add_outgoing(message_id=mid, app_id=app, dst=A, content=b"out %d" % i,
                           created_at=float(i), expires_at=i + 100.0)  # fmt: skip
        store.set_outgoing_state(mid, DeliveryState.SENT, None, at=i + 0.5)
        if i % 2:
            store.set_outgoing_state(mid, DeliveryState.DELIVERED, None, at=i + 0.7)
        else:
            store.set_outgoing_state(mid, DeliveryState.FAILED, "gone", at=i + 0.7)
        store.add_incoming(message_id=mid, app_id=app, src=B, content=b"in %d" % i,
                           received_at=i + 0.1, hops=2)  # fmt: skip
        if i % 5 == 0:
            store.append_event(None, AppEventKind.NEIGHBOUR_UP, float(i), peer=A, detail="x")


def test_tail_serves_exactly_what_the_database_holds(store: Store, path: Path) -> None:
    _traffic(store, 40)
    store.commit()
    last = store.last_cursor()
    assert store._tail and store._tail_from == 0  # everything since open is in memory
    for app in ("chat", "files", "nobody"):
        for cursor in (0, 1, 7, last - 3, last):
            got = store.events_after(app, cursor, limit=10_000, upto=last)
            assert got == _from_db(path, app, cursor, last), (app, cursor)
    # Limits and upto inside the tail, too.
    assert store.events_after("chat", 5, limit=7, upto=last - 10) == _from_db(
        path, "chat", 5, last - 10, limit=7
    )
    states = [e.message.state for e in store.events_after("chat", 0, limit=100, upto=last)
              if e.kind is AppEventKind.DELIVERY_STATE and e.message is not None]  # fmt: skip
    # The state as of each event, not the message's latest.
    assert states[:3] == [DeliveryState.QUEUED, DeliveryState.SENT, DeliveryState.DELIVERED]


def test_uncommitted_events_are_not_in_the_tail(store: Store) -> None:
    _traffic(store, 3)
    store.commit()
    committed = store.last_cursor()
    _traffic(store, 2, start=3)
    assert store.last_cursor() > committed
    got = store.events_after("chat", 0, limit=1000, upto=committed)
    assert got and max(e.cursor for e in got) <= committed
    assert all(entry[0] <= committed for entry in store._tail)
    store.commit()
    assert store._tail[-1][0] == store.last_cursor()


def test_behind_the_tail_reads_the_store(store: Store, path: Path) -> None:
    # Enough events that the tail drops its oldest half at least once.
    for start in range(0, 2 * TAIL_MAX // 4 + 100, 50):  # ~4 events per message
        _traffic(store, 50, start=start)
        store.commit()
    last = store.last_cursor()
    assert store._tail_from > 0 and len(store._tail) <= 2 * TAIL_MAX
    for cursor in (0, store._tail_from - 1, store._tail_from, store._tail_from + 1):
        got = store.events_after("chat", cursor, limit=300, upto=last)
        assert got == _from_db(path, "chat", cursor, last, limit=300), cursor
        assert got[0].cursor > cursor


def test_a_message_not_in_memory_is_read_from_the_store(path: Path) -> None:
    first = Store.open(path)
    first.add_outgoing(message_id=b"m" * 8, app_id="chat", dst=A, content=b"before restart",
                       created_at=1.0, expires_at=100.0)  # fmt: skip
    first.close()
    again = Store.open(path)
    try:
        again.outbox()  # as the node does at start
        start = again.last_cursor()
        again.set_outgoing_state(b"m" * 8, DeliveryState.DELIVERED, None, at=2.0)
        again.commit()
        got = again.events_after("chat", start, limit=10, upto=again.last_cursor())
        assert len(got) == 1 and got[0].message is not None
        assert got[0].message.payload == b"before restart"
        assert got[0].message.state is DeliveryState.DELIVERED
    finally:
        again.close()


def test_group_id_set_after_receipt_is_in_the_tail(store: Store, path: Path) -> None:
    store.add_incoming(message_id=b"g" * 8, app_id="chat", src=B, content=b"to the group",
                       received_at=1.0, hops=1)  # fmt: skip
    store.set_group_id(B, b"g" * 8, b"\x07" * 16)
    store.commit()
    got = store.events_after("chat", 0, limit=10, upto=store.last_cursor())
    assert got[0].message is not None and got[0].message.group_id == b"\x07" * 16
    assert got == _from_db(path, "chat", 0, store.last_cursor())


def test_pruned_events_are_not_served_from_memory(store: Store, path: Path) -> None:
    _traffic(store, 20)
    store.commit()
    assert store.prune_events(now=50.0, keep=10) > 0
    store.commit()
    last = store.last_cursor()
    got = store.events_after("chat", 0, limit=1000, upto=last)
    assert got == _from_db(path, "chat", 0, last)
    assert all(e.cursor > last - 10 for e in got)


def test_a_failed_write_keeps_its_events_out_of_the_tail(store: Store, path: Path) -> None:
    _traffic(store, 2)
    store.commit()
    before = store.last_cursor()
    store.append_event("chat", AppEventKind.KEY_CHANGED, 9.0, peer=A)
    conn = store._conn
    store._conn = sqlite3.connect(":memory:")  # no tables: the flush fails
    try:
        with pytest.raises(StoreError):
            store.commit()
    finally:
        store._conn.close()
        store._conn = conn
    store.append_event("chat", AppEventKind.KEY_CHANGED, 10.0, peer=B)
    store.commit()
    last = store.last_cursor()
    got = store.events_after("chat", before, limit=10, upto=last)
    # The lost event is not served (it is not on disk); the next one is.
    assert [e.at for e in got] == [10.0]
    assert got == _from_db(path, "chat", before, last)
