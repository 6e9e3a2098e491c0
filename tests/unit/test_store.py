"""The SQLite store: outbox, history, event log, retention, peers/paths, errors."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.envelope import Envelope
from meshd.errors import FailedPrecondition, StoreError
from meshd.node_api import AppEventKind, Direction, MessageRecord
from meshd.router.events import DeliveryState
from meshd.store import Store
from meshd.store.schema import SCHEMA_VERSION
from meshd.store.statedir import StateLock, ensure_state_dir, load_or_create_identity

A = NodeAddress(b"\x01" * 16)
B = NodeAddress(b"\x02" * 16)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "meshd.db")
    yield s
    s.close()


def _send(
    store: Store, mid: bytes, app: str = "chat", dst: NodeAddress = A, at: float = 1.0
) -> MessageRecord:
    return store.add_outgoing(
        message_id=mid,
        app_id=app,
        dst=dst,
        content=b"hello " + mid,
        created_at=at,
        expires_at=at + 100,
    )


def test_wal_and_schema(store: Store, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "meshd.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_outgoing_lifecycle(store: Store) -> None:
    rec = _send(store, b"m" * 8)
    store.commit()
    assert rec.state is DeliveryState.QUEUED and rec.cursor is not None
    rows, bad = store.outbox()
    assert bad == [] and [r.message_id for r in rows] == [b"m" * 8]
    assert rows[0].payload == Envelope("chat", b"hello " + b"m" * 8).encode()
    assert rows[0].dst == A
    c1 = store.set_outgoing_state(b"m" * 8, DeliveryState.SENT, None, at=2.0)
    c2 = store.set_outgoing_state(b"m" * 8, DeliveryState.DELIVERED, None, at=3.0)
    assert c1 is not None and c2 is not None and rec.cursor < c1 < c2
    assert store.outbox_count() == 0  # final state leaves the outbox
    got = store.get_message("chat", b"m" * 8)
    assert got is not None and got.state is DeliveryState.DELIVERED
    assert got.payload == b"hello " + b"m" * 8 and got.direction is Direction.OUTGOING
    assert store.set_outgoing_state(b"x" * 8, DeliveryState.SENT, None, at=4.0) is None


def test_events_carry_state_as_of_the_event(store: Store) -> None:
    _send(store, b"a" * 8)
    store.set_outgoing_state(b"a" * 8, DeliveryState.SENT, None, at=2.0)
    store.set_outgoing_state(b"a" * 8, DeliveryState.FAILED, "expired", at=3.0)
    events = store.events_after("chat", 0, limit=10)
    assert [e.kind for e in events] == [AppEventKind.DELIVERY_STATE] * 3
    assert [e.message.state for e in events if e.message] == [
        DeliveryState.QUEUED,
        DeliveryState.SENT,
        DeliveryState.FAILED,
    ]
    assert events[2].message is not None and events[2].message.reason == "expired"


def test_incoming_dedup_and_app_filter(store: Store) -> None:
    r1 = store.add_incoming(
        message_id=b"i" * 8, app_id="chat", src=B, content=b"yo", received_at=5.0, hops=2
    )
    dup = store.add_incoming(
        message_id=b"i" * 8, app_id="chat", src=B, content=b"yo", received_at=6.0, hops=2
    )
    other = store.add_incoming(
        message_id=b"j" * 8, app_id="files", src=B, content=b"f", received_at=6.0, hops=1
    )
    store.append_event(None, AppEventKind.NEIGHBOUR_UP, 7.0, peer=B, detail="tcp")
    assert r1 is not None and dup is None and other is not None
    chat = store.events_after("chat", 0, limit=100)
    assert [e.kind for e in chat] == [AppEventKind.MESSAGE_RECEIVED, AppEventKind.NEIGHBOUR_UP]
    assert chat[0].message is not None and chat[0].message.payload == b"yo"
    assert chat[0].message.hops == 2 and chat[0].message.peer == B
    files = store.events_after("files", 0, limit=100)
    assert [e.message.app_id for e in files if e.message] == ["files"]
    assert store.get_message("files", b"i" * 8) is None  # another app's message


def test_cursor_resume_and_history_paging(store: Store) -> None:
    for i in range(10):
        _send(store, bytes([i]) * 8, dst=A if i % 2 else B, at=float(i))
    store.commit()
    events = store.events_after("chat", 0, limit=4)
    assert len(events) == 4
    rest = store.events_after("chat", events[-1].cursor, limit=100)
    assert len(rest) == 6 and rest[0].cursor > events[-1].cursor
    page1 = store.history("chat", peer=None, limit=4, before_cursor=None)
    assert [r.message_id[0] for r in page1] == [9, 8, 7, 6]
    assert page1[-1].cursor is not None
    page2 = store.history("chat", peer=None, limit=4, before_cursor=page1[-1].cursor)
    assert [r.message_id[0] for r in page2] == [5, 4, 3, 2]
    to_a = store.history("chat", peer=A, limit=100, before_cursor=None)
    assert [r.message_id[0] for r in to_a] == [9, 7, 5, 3, 1]
    assert store.history("other", peer=None, limit=100, before_cursor=None) == []


def test_retention_keeps_cursor_increasing(store: Store) -> None:
    now = time.time()
    for i in range(50):
        store.append_event(None, AppEventKind.PATH_CHANGED, now - 1000 + i, peer=A)
    assert store.prune_events(now=now, keep=20) == 30
    assert store.prune_events(now=now, keep=100, max_age=965) == 5
    left = store.events_after("x", 0, limit=100)
    assert len(left) == 15
    new = store.append_event(None, AppEventKind.PATH_CHANGED, now, peer=A)
    assert new == 51  # AUTOINCREMENT: never reuses a pruned cursor


def test_durable_pending_flags_what_must_reach_disk(store: Store) -> None:
    store.set_path(A, B, 1, 1.0, now=1.0)
    assert not store.durable_pending  # routing state may be lost: it is relearnt
    _send(store, b"p" * 8)
    assert store.durable_pending
    store.durable_pending = False
    store.add_incoming(message_id=b"q" * 8, app_id="x", src=B, content=b"", received_at=1, hops=0)
    assert store.durable_pending
    store.commit()
    store.sync_wal()


def test_commit_is_durable_across_reopen(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "db")
    _send(s, b"d" * 8)
    s.commit()
    s._conn.close()  # no clean close: like a crash right after the commit
    s2 = Store.open(tmp_path / "db")
    rows, _ = s2.outbox()
    assert [r.message_id for r in rows] == [b"d" * 8]
    s2.close()


def test_uncommitted_write_is_not_visible_after_crash(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "db")
    _send(s, b"u" * 8)
    s._conn.close()  # without commit
    s2 = Store.open(tmp_path / "db")
    assert s2.outbox_count() == 0
    s2.close()


def test_apps_ownership(store: Store) -> None:
    assert store.app_owner("chat") is None
    store.claim_app("chat", 1000, 1.0)
    store.claim_app("chat", 1001, 2.0)  # first claim wins
    assert store.app_owner("chat") == 1000


def test_peers_and_paths(store: Store) -> None:
    ident = Identity.from_seed(bytes(range(64))).public
    store.upsert_peer(ident, now=1.0, endpoint="tcp 1.2.3.4:4717")
    store.upsert_peer(ident, now=5.0)
    (peer,) = store.peers()
    assert peer.address == ident.address and peer.first_seen == 1.0 and peer.last_seen == 5.0
    assert peer.endpoint == "tcp 1.2.3.4:4717"
    store.set_path(A, B, 2, 1.5, now=1.0)
    store.set_path(A, B, 3, 2.5, now=2.0)
    assert [(p.dst, p.hops) for p in store.paths()] == [(A, 3)]
    store.delete_path(A)
    assert store.paths() == []


def test_bad_outbox_row_is_reported_and_kept(store: Store) -> None:
    _send(store, b"g" * 8)
    store._write("INSERT INTO outbox VALUES (?, 1, 'chat', ?, 1, 2, 'bogus', 0)", (b"b" * 8, A.raw))
    store._write(
        "INSERT INTO outbox VALUES (?, 99, 'chat', ?, 1, 2, 'queued', 0)", (b"c" * 8, A.raw)
    )
    store.commit()
    rows, bad = store.outbox()
    assert [r.message_id for r in rows] == [b"g" * 8]
    assert len(bad) == 2
    assert "6262626262626262" in bad[0] and "bogus" in bad[0]
    assert "6363636363636363" in bad[1] and "history row 99 is missing" in bad[1]
    assert store.outbox_count() == 3  # nothing deleted


def test_bad_history_row_raises_clear_error(store: Store) -> None:
    _send(store, b"h" * 8)
    store._write("UPDATE history SET peer = x'00'")
    with pytest.raises(StoreError, match="history row id=1"):
        store.history("chat", peer=None, limit=10, before_cursor=None)
    with pytest.raises(StoreError, match="event cursor=1"):
        store.events_after("chat", 0, limit=10)


def test_garbage_file_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "meshd.db"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(StoreError, match=r"unreadable.*left untouched"):
        Store.open(path)
    assert path.read_bytes() == junk


def test_corrupted_page_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "meshd.db"
    s = Store.open(path)
    for i in range(300):
        _send(s, i.to_bytes(8, "big"))
    s.commit()
    s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    data = bytearray(path.read_bytes())
    for off in range(4096 * 2, min(len(data), 4096 * 6)):
        data[off] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError):
        Store.open(path)


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "meshd.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this meshd"):
        Store.open(path)


def test_identity_created_once_0600(tmp_path: Path) -> None:
    d = ensure_state_dir(tmp_path / "state")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    ident, created = load_or_create_identity(d)
    again, created2 = load_or_create_identity(d)
    assert created and not created2 and again.address == ident.address
    assert stat.S_IMODE(os.stat(d / "identity.key").st_mode) == 0o600
    (d / "identity.key").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupted"):
        load_or_create_identity(d)
    assert (d / "identity.key").read_bytes() == b"garbage"


def test_state_lock_excludes_a_second_daemon(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    first.acquire()
    with pytest.raises(FailedPrecondition, match="another meshd"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_repeated_state_writes_nothing(store: Store) -> None:
    _send(store, b"r" * 8)
    before = store.last_cursor()
    # The core reports QUEUED for the send that add_outgoing recorded as QUEUED.
    assert store.set_outgoing_state(b"r" * 8, DeliveryState.QUEUED, None, at=2.0) is None
    assert store.last_cursor() == before
    assert store.set_outgoing_state(b"r" * 8, DeliveryState.SENT, None, at=3.0) == before + 1
    assert store.set_outgoing_state(b"r" * 8, DeliveryState.SENT, None, at=4.0) is None
    store.commit()
    # After a restart (index rebuilt from the outbox rows) the same holds.
    store._inflight.clear()
    assert store.set_outgoing_state(b"r" * 8, DeliveryState.SENT, None, at=5.0) is None


def test_events_after_stops_at_upto(store: Store) -> None:
    for i in range(5):
        store.append_event(None, AppEventKind.PATH_CHANGED, float(i), peer=A)
    assert [e.cursor for e in store.events_after("x", 0, limit=10, upto=3)] == [1, 2, 3]
    assert len(store.events_after("x", 0, limit=10)) == 5


def test_history_retention_keeps_outbox_and_evented_messages(store: Store) -> None:
    now = time.time()
    _send(store, b"o" * 8, at=now - 1000)  # old but still in the outbox
    for i in range(5):
        store.add_incoming(
            message_id=bytes([i]) * 8,
            app_id="chat",
            src=B,
            content=b"",
            received_at=now - 1000,
            hops=1,
        )
    assert store.prune_history(now=now, max_age=10) == 0  # every one has a retained event
    store.prune_events(now=now, max_age=10)  # the events went: the incoming ones may go
    assert store.prune_history(now=now, max_age=10) == 5
    assert [
        r.message_id for r in store.history("chat", peer=None, limit=10, before_cursor=None)
    ] == [b"o" * 8]


def test_background_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "meshd.db"
    s = Store.open(path)
    for i in range(300):
        _send(s, i.to_bytes(8, "big"))
    s.commit()
    s.check_integrity()  # a healthy file passes, next to the open main connection
    s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    data = bytearray(path.read_bytes())
    for off in range(4096 * 2, min(len(data), 4096 * 6)):
        data[off] ^= 0x5A
    path.write_bytes(bytes(data))
    damaged = Store(sqlite3.connect(path, isolation_level=None), path)  # opened unchecked
    with pytest.raises(StoreError):
        damaged.check_integrity()
    damaged._conn.close()


def test_history_pruning_walks_in_batches(store: Store) -> None:
    now = time.time()
    for i in range(30):
        store.add_incoming(
            message_id=i.to_bytes(8, "big"), app_id="chat", src=B, content=b"",
            received_at=now - 1000 if i < 20 else now, hops=1,
        )  # fmt: skip
    store.prune_events(now=now, max_age=10)  # the old messages' events are gone
    assert store.prune_history(now=now, max_age=10, batch=3, max_batches=2) == 6
    assert store.prune_history(now=now, max_age=10, batch=3, max_batches=100) == 14
    assert store.prune_history(now=now, max_age=10) == 0
    assert len(store.history("chat", peer=None, limit=100, before_cursor=None)) == 10
    assert store.prune_history(now=now, keep=4) == 0  # the 10 left all have events


def test_prune_events_is_bounded_per_call(store: Store) -> None:
    now = time.time()
    for _ in range(30):
        store.append_event(None, AppEventKind.PATH_CHANGED, now - 1000, peer=A)
    assert store.prune_events(now=now, max_age=10, limit=12) == 12
    assert store.events_after("x", 0, limit=1)[0].cursor == 13  # the oldest went first
    assert store.prune_events(now=now, max_age=10, limit=100) == 18


def test_batched_writes_keep_order_and_ids_across_reopen(tmp_path: Path) -> None:
    """Outgoing writes are queued and run as one executemany per statement at commit:
    a message queued and finished before one commit leaves no outbox row, an incoming row
    written meanwhile gets its own id, and ids/cursors are not reused after a crash."""
    s = Store.open(tmp_path / "db")
    done = _send(s, b"a" * 8)
    kept = _send(s, b"b" * 8)
    s.set_outgoing_state(b"a" * 8, DeliveryState.SENT, None, at=2.0)
    s.set_outgoing_state(b"a" * 8, DeliveryState.DELIVERED, None, at=3.0)
    s.set_outgoing_state(b"b" * 8, DeliveryState.HELD_BY_CUSTODIAN, None, at=3.0)
    s.set_attempts([(b"b" * 8, 4)])
    got = s.add_incoming(
        message_id=b"i" * 8, app_id="chat", src=B, content=b"x", received_at=4.0, hops=1
    )
    assert got is not None and s.in_transaction
    s.commit()
    assert not s.in_transaction
    cursors = [done.cursor, kept.cursor, got.cursor]
    s._conn.close()  # a crash right after the commit
    s2 = Store.open(tmp_path / "db")
    rows, bad = s2.outbox()
    assert bad == []
    assert [(r.message_id, r.state, r.attempts) for r in rows] == [
        (b"b" * 8, DeliveryState.HELD_BY_CUSTODIAN, 4)
    ]
    msg = s2.get_message("chat", b"a" * 8)
    assert msg is not None and msg.state is DeliveryState.DELIVERED and msg.cursor == cursors[0]
    incoming = s2.get_message("chat", b"i" * 8)
    assert incoming is not None and incoming.direction is Direction.INCOMING
    assert incoming.cursor == cursors[2]
    states = [
        (e.cursor, e.message.state if e.message else None)
        for e in s2.events_after("chat", 0, limit=100)
    ]
    assert states == [
        (cursors[0], DeliveryState.QUEUED),
        (cursors[1], DeliveryState.QUEUED),
        (cursors[1] + 1, DeliveryState.SENT),
        (cursors[1] + 2, DeliveryState.DELIVERED),
        (cursors[1] + 3, DeliveryState.HELD_BY_CUSTODIAN),
        (cursors[2], None),
    ]
    later = _send(s2, b"c" * 8)
    s2.commit()
    assert later.cursor is not None and later.cursor > max(c or 0 for c in cursors)
    ids = s2._read("SELECT id FROM history ORDER BY id")
    assert [r[0] for r in ids] == [1, 2, 3, 4]
    s2.close()


def test_writes_to_other_tables_keep_the_batch_and_readers_still_see_it(store: Store) -> None:
    """Only a statement naming a table with queued rows runs the queue first: the e2e
    layer's writes between sends no longer split the batch, and reads stay consistent."""
    _send(store, b"q" * 8)
    store.claim_app("other", 1000, 1.0)  # apps: another table
    store.set_path(B, A, 1, 1.0, now=1.0)
    assert store._pending_rows > 0
    assert store.app_owner("other") == 1000 and store._pending_rows > 0
    msg = store.get_message("chat", b"q" * 8)  # history: the queue runs first
    assert msg is not None and msg.state is DeliveryState.QUEUED
    assert store._pending_rows == 0
    _send(store, b"r" * 8)
    rows = store._read("SELECT COUNT(*) FROM OUTBOX")  # any spelling of the table name
    assert rows[0][0] == 2 and store._pending_rows == 0
